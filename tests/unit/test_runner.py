"""GreenletRunner: per-request jobs on reused greenlets."""

from __future__ import annotations

import gevent
from gevent.event import Event

from metaproxy.runner import GreenletRunner


def _run_jobs(runner: GreenletRunner, n: int, fn) -> None:
    done = Event()
    left = [n]

    def job(i: int) -> None:
        try:
            fn(i)
        finally:
            left[0] -= 1
            if not left[0]:
                done.set()

    for i in range(n):
        runner.spawn(job, i)
    assert done.wait(5)


def test_sequential_jobs_reuse_one_greenlet() -> None:
    runner = GreenletRunner()
    seen = []
    for i in range(20):
        _run_jobs(runner, 1, lambda _i, i=i: seen.append(i))
    assert seen == list(range(20))
    assert runner.started == 1


def test_concurrent_jobs_each_get_a_greenlet_then_are_reused() -> None:
    runner = GreenletRunner()
    _run_jobs(runner, 10, lambda _i: gevent.sleep(0.001))
    assert runner.started == 10
    _run_jobs(runner, 10, lambda _i: gevent.sleep(0.001))
    assert runner.started == 10


def test_a_failing_job_is_logged_and_its_greenlet_goes_on(caplog) -> None:
    runner = GreenletRunner()

    def boom(_i: int) -> None:
        raise RuntimeError("bad job")

    _run_jobs(runner, 1, boom)
    assert "bad job" in caplog.text
    results = []
    _run_jobs(runner, 1, results.append)
    assert results == [0]
    assert runner.started == 1


def test_max_idle_bounds_parked_greenlets() -> None:
    runner = GreenletRunner(max_idle=3)
    _run_jobs(runner, 8, lambda _i: gevent.sleep(0.001))
    gevent.sleep(0)
    assert len(runner._idle) == 3


def test_a_stray_wakeup_of_a_parked_greenlet_is_ignored() -> None:
    runner = GreenletRunner()
    _run_jobs(runner, 1, lambda _i: None)
    parked = runner._idle[-1]
    gevent.get_hub().loop.run_callback(parked.throw, RuntimeError("late timer"))
    gevent.sleep(0)
    assert not parked.dead and runner._idle == [parked]
    results = []
    _run_jobs(runner, 1, results.append)
    assert results == [0] and runner.started == 1


def test_killing_a_parked_greenlet_removes_it() -> None:
    runner = GreenletRunner()
    _run_jobs(runner, 1, lambda _i: None)
    parked = runner._idle[-1]
    gevent.get_hub().loop.run_callback(parked.throw, gevent.GreenletExit())
    gevent.sleep(0)
    assert parked.dead and runner._idle == []
