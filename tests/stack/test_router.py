"""The local router is as strict about HTTP framing as the front end it stands in for.

Raw sockets against the running stack (the router frames requests with h11): every framing
error gets a 400 JSON error or a clean close, a body over the limit a 413 before it is read,
and the router keeps serving, with at most a fixed number of connection threads."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.support.photos import CAT_INDICES, cat_jpeg

pytestmark = pytest.mark.integration


def exchange(stack, raw: bytes, *, close_write: bool = True, timeout: float = 20.0) -> tuple[int | None, dict | None]:
    """Send ``raw`` to the router, half-close, and read the answer: (status, JSON body) or (None, None) on a close."""
    with socket.create_connection(("127.0.0.1", stack.router_port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the router may already have answered and closed
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    answer = b"".join(chunks)
    if not answer:
        return None, None
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), answer[:300]
    return status, json.loads(body)


def assert_json_error(answer, status: int, code: str) -> None:
    found_status, body = answer
    assert found_status == status, body
    assert body["error"]["code"] == code and body["error"]["status"] == status


def still_serving(stack) -> None:
    response = requests.get(f"{stack.url}/v1/models", timeout=30)
    assert response.status_code == 200


def request_head(method: str = "POST", path: str = "/v1/classify", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: image/jpeg"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_a_chunk_size_of_2_to_the_64_then_a_close_is_refused_without_waiting_for_it(stack):
    # h11 reads a chunk as it arrives (it does not expose the declared size): the body is refused
    # when the client closes early, and would be with 413 once more than the limit arrived.
    raw = request_head(Transfer_Encoding="chunked") + b"ffffffffffffffff\r\n" + b"x" * 1000

    assert_json_error(exchange(stack, raw), 400, "INVALID_REQUEST")
    still_serving(stack)


def test_chunks_past_the_body_limit_are_refused_after_the_limit_not_read_forever(stack):
    limit = stack.max_body_bytes()
    stop = threading.Event()

    def endless_chunks(sock):
        chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
        try:
            while not stop.is_set():
                sock.sendall(chunk)
        except OSError:
            pass

    with socket.create_connection(("127.0.0.1", stack.router_port), timeout=30) as sock:
        sock.sendall(request_head(Transfer_Encoding="chunked"))
        sender = threading.Thread(target=endless_chunks, args=(sock,), daemon=True)
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        stop.set()
    assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer[:200]
    assert limit < 64 * 2**20
    still_serving(stack)


FRAMING_ERRORS = [
    ("non-hex chunk size", request_head(Transfer_Encoding="chunked") + b"zz\r\nhello\r\n0\r\n\r\n"),
    ("chunk size with a sign", request_head(Transfer_Encoding="chunked") + b"-5\r\nhello\r\n0\r\n\r\n"),
    ("truncated chunked body", request_head(Transfer_Encoding="chunked") + b"10\r\nonly a part"),
    ("chunk longer than its size", request_head(Transfer_Encoding="chunked") + b"2\r\nhello\r\n0\r\n\r\n"),
    ("no last chunk", request_head(Transfer_Encoding="chunked") + b"5\r\nhello\r\n"),
    ("Content-Length larger than the body", request_head(Content_Length="1000") + b"short"),
    ("two different Content-Length", request_head(Content_Length="5") .replace(
        b"\r\n\r\n", b"\r\nContent-Length: 50\r\n\r\n") + b"hello"),
    ("Content-Length list with two values", request_head(Content_Length="5, 6") + b"hello"),
    ("Content-Length not a number", request_head(Content_Length="5x") + b"hello"),
    ("Content-Length and Transfer-Encoding", request_head(Content_Length="5", Transfer_Encoding="chunked")
     + b"5\r\nhello\r\n0\r\n\r\n"),
    ("an encoding other than chunked", request_head(Transfer_Encoding="gzip, chunked") + b"0\r\n\r\n"),
    ("control character in the method", request_head(method="PO\x01ST") + b""),
    ("control character in the target", request_head(path="/v1/classify?model=a\x01b") + b""),
]


@pytest.mark.parametrize("name, raw", FRAMING_ERRORS, ids=[name for name, _ in FRAMING_ERRORS])
def test_framing_errors_get_a_400_json_error_and_the_router_keeps_serving(stack, name, raw):
    assert_json_error(exchange(stack, raw), 400, "INVALID_REQUEST")
    still_serving(stack)


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET / HTTP/1.1 extra", b"GET / HTTP/9.9", b"GET / XTTP/1.1"])
def test_a_malformed_request_line_gets_a_400_json_error(stack, line):
    assert_json_error(exchange(stack, line + b"\r\n\r\n"), 400, "INVALID_REQUEST")


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_sent(stack):
    raw = request_head(Content_Length=str(stack.max_body_bytes() + 1))

    assert_json_error(exchange(stack, raw, close_write=False), 413, "PAYLOAD_TOO_LARGE")


def test_the_same_content_length_twice_and_a_chunked_body_are_forwarded(stack):
    photo = cat_jpeg()
    repeated = request_head(Content_Length=str(len(photo))).replace(
        b"\r\n\r\n", f"\r\nContent-Length: {len(photo)}\r\n\r\n".encode()) + photo
    chunked = request_head(Transfer_Encoding="chunked") + b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (photo[:1000], photo[1000:])) + b"0\r\n\r\n"

    for raw in (repeated, chunked):
        status, body = exchange(stack, raw)
        assert status == 200, body
        assert body["results"][0]["predictions"][0]["index"] in CAT_INDICES


def test_a_client_that_stops_sending_is_dropped_and_does_not_hold_the_router(stack):
    with socket.create_connection(("127.0.0.1", stack.router_port), timeout=60) as sock:
        sock.sendall(request_head(Content_Length="100") + b"abc")
        started = time.monotonic()
        still_serving(stack)  # other clients are served meanwhile
        answer = sock.recv(65536)
    assert time.monotonic() - started < 45
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_more_keep_alive_clients_than_server_threads_meet_no_reset(stack):
    """gunicorn's gthread worker closes a kept-alive connection after 2 s idle; a request sent
    on it at that moment is reset (measured: 64 such clients straight at a function met 10
    resets in 1509 requests). Clients that idle about 2 s between requests are the worst case;
    through the router, which forwards each request on a fresh connection, all are answered."""
    import random

    stop_at = time.monotonic() + 10
    answers: list[int] = []
    failures: list[str] = []

    def client(seed: int) -> None:
        pause = random.Random(seed)
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                try:
                    answers.append(session.get(f"{stack.url}/v1/models", timeout=30).status_code)
                except requests.RequestException as error:
                    failures.append(repr(error))
                time.sleep(pause.choice([0, 0.01, 1.95, 2.0, 2.05]))

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(48)]
    for each in clients:
        each.start()
    for each in clients:
        each.join(timeout=60)

    assert failures == []
    assert len(answers) > 200 and set(answers) == {200}


def test_connections_past_the_thread_cap_wait_for_a_slot_and_are_then_served():
    from devstack.processes import free_port
    from devstack.router import RouterServer

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = RouterServer(("127.0.0.1", free_port()), app, max_body_bytes=1024, max_connections=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = server.server_address
    try:
        holders = [socket.create_connection(address, timeout=10) for _ in range(2)]  # both slots, idle
        time.sleep(0.2)
        waiting = socket.create_connection(address, timeout=10)  # accepted by the kernel, not served
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        waiting.settimeout(1.0)
        with pytest.raises(TimeoutError):
            waiting.recv(100)
        holders[0].close()  # a slot frees: the waiting connection is served
        waiting.settimeout(10)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200 ")
        for each in (holders[1], waiting):
            each.close()
    finally:
        server.shutdown()
        server.server_close()
