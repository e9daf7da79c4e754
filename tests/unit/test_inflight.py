"""Work in flight: alone or beside other work, and quiet once none has overlapped for a while.
The engines' thread policy (a forward alone gets every core) and the memory release ask it."""

from __future__ import annotations

import pytest

from imgclassify import inflight
from imgclassify.inflight import InFlight
from imgclassify.runtime import engines


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(inflight.time, "monotonic", lambda: now[0])
    return now


def test_work_that_starts_alone_is_alone_and_work_beside_it_is_not(clock):
    work = InFlight()

    first = work.enter()
    second = work.enter()
    assert work.running == 2
    assert (work.leave(), work.leave()) == (False, True)

    assert (first, second) == (True, False) and work.running == 0


def test_after_an_overlap_a_lone_forward_waits_the_quiet_time_before_it_gets_every_core_again(clock):
    forwards = InFlight()
    forwards.enter(), forwards.enter(), forwards.leave(), forwards.leave()

    clock[0] += engines.QUIET_SECONDS - 0.01
    soon = forwards.enter(quiet_for=engines.QUIET_SECONDS)
    forwards.leave()
    clock[0] += 0.01
    later = forwards.enter(quiet_for=engines.QUIET_SECONDS)
    forwards.leave()

    assert (soon, later) == (False, True)


def test_a_lone_forward_gets_every_core_only_while_forwards_follow_one_another(clock):
    forwards = InFlight()
    window = engines.FOLLOWING_SECONDS

    first = forwards.enter(following_within=window)  # none has ended yet: the pool has never run
    clock[0] += 0.05
    forwards.leave()
    clock[0] += window
    following = forwards.enter(following_within=window)
    clock[0] += 0.05
    forwards.leave()
    clock[0] += window + 0.001
    after_idle = forwards.enter(following_within=window)
    forwards.leave()

    assert (first, following, after_idle) == (False, True, False)


def test_the_last_to_leave_says_whether_the_overlaps_have_been_over_for_the_quiet_time(clock):
    requests = InFlight()
    requests.enter(), requests.enter()
    clock[0] += 5
    assert not requests.leave(quiet_for=1)  # the other is still in flight
    assert not requests.leave(quiet_for=1)  # it overlapped this one until now

    requests.enter()
    clock[0] += 1
    assert requests.leave(quiet_for=1)


def test_a_reset_forgets_the_count_and_a_lock_held_at_a_fork(clock):
    work = InFlight()
    work.enter()
    work._lock.acquire()  # a thread of the parent held it when the process forked

    work.reset()

    assert work.running == 0 and work.enter() is True
