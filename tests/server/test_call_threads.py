"""The threads that run the server's calls (server/call_threads.py): results and failures handed over, the calls
spread over the threads, stop() letting handed-over calls finish and dropping later ones."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.python.failure import Failure

from sfa_omf.server.call_threads import CallThreads


@pytest.fixture
def threads() -> Any:
    pool = CallThreads(4, name="test-calls")
    pool.start()
    yield pool
    pool.stop()


def _outcomes(pool: CallThreads, calls: list[tuple[Any, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    done = threading.Semaphore(0)
    outcomes: list[tuple[bool, Any]] = []

    def noted(ok: bool, result: Any) -> None:
        outcomes.append((ok, result))
        done.release()

    for function, args in calls:
        pool.callInThreadWithCallback(noted, function, *args)
    for _ in calls:
        assert done.acquire(timeout=10), "a call's outcome never came"
    return outcomes


def test_a_result_and_a_failure_are_handed_over(threads: CallThreads) -> None:
    def refuse(reason: str) -> None:
        raise ValueError(reason)

    outcomes = _outcomes(threads, [(lambda a, b: a + b, (2, 3)), (refuse, ("no",))])
    assert (True, 5) in outcomes
    (failed,) = [result for ok, result in outcomes if not ok]
    assert isinstance(failed, Failure) and failed.check(ValueError) and str(failed.value) == "no"


def test_calls_run_at_once_on_as_many_threads(threads: CallThreads) -> None:
    barrier = threading.Barrier(4, timeout=10)  # passes only when four calls run at the same time

    def meet() -> str:
        barrier.wait()
        return threading.current_thread().name

    names = [result for ok, result in _outcomes(threads, [(meet, ())] * 4) if ok]
    assert len(set(names)) == 4 and all(name.startswith("test-calls-") for name in names)


def test_a_failing_hand_over_does_not_lose_the_thread() -> None:
    pool = CallThreads(1, name="test-one")
    pool.start()
    try:

        def broken(_ok: bool, _result: Any) -> None:
            raise RuntimeError("the hand-over failed")

        pool.callInThreadWithCallback(broken, lambda: 1)
        assert _outcomes(pool, [(lambda: "still here", ())]) == [(True, "still here")]
    finally:
        pool.stop()


def test_stop_finishes_what_was_handed_over_and_drops_what_comes_after() -> None:
    pool = CallThreads(2, name="test-stop")
    pool.start()
    release = threading.Event()
    finished: list[int] = []

    def slow(number: int) -> None:
        release.wait(10)
        finished.append(number)

    for number in range(4):
        pool.callInThreadWithCallback(None, slow, number)
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    release.set()
    stopper.join(10)
    assert not stopper.is_alive() and sorted(finished) == [0, 1, 2, 3]
    assert not any(thread.name.startswith("test-stop-") for thread in threading.enumerate())
    pool.callInThreadWithCallback(None, finished.append, 99)
    pool.start()  # a stopped pool does not start again
    assert pool._calls.qsize() == 0, "a call handed over after stop() is dropped, not queued"
    assert 99 not in finished and not any(thread.name.startswith("test-stop-") for thread in threading.enumerate())
