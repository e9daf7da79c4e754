"""The engine's thread policy: a forward gets every core only when it runs alone, and only once
no forward has overlapped another for a while."""

from __future__ import annotations

import pytest

from imgclassify.runtime import engines


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(engines.time, "monotonic", lambda: now[0])
    return now


def test_a_forward_alone_may_use_every_core_and_one_beside_it_may_not(clock):
    forwards = engines._Forwards()

    with forwards.start() as first:
        with forwards.start() as second:
            assert forwards.running == 2

    assert (first, second) == (True, False) and forwards.running == 0


def test_after_an_overlap_a_lone_forward_waits_the_quiet_time_before_it_gets_every_core_again(clock):
    forwards = engines._Forwards()
    with forwards.start(), forwards.start():
        pass

    clock[0] += engines._Forwards.QUIET_SECONDS - 0.01
    with forwards.start() as soon:
        pass
    clock[0] += 0.01
    with forwards.start() as later:
        pass

    assert (soon, later) == (False, True)


def test_a_forward_that_raises_is_no_longer_counted(clock):
    forwards = engines._Forwards()

    with pytest.raises(RuntimeError), forwards.start():
        raise RuntimeError("the runtime failed")

    assert forwards.running == 0
