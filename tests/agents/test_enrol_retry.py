"""The node's registration tries again while the server cannot complete it (503 and the like: many nodes joining at
once, its DNS or testbed down — it wrote nothing, and the same token works again) or does not answer, waiting 1, 2,
4 ... 30 s, until ``retry_for_s`` is spent; a refusal (bad token, a name taken) is final at once. The policy is
driven here with the server's answers as the client sees them and the waits recorded instead of slept."""

from __future__ import annotations

import socket

import pytest

from sfa_omf.agents.node import AgentCallError, _register_until


class Answers:
    """The server's answers to successive registrations (an exception to raise, or the answer)."""

    def __init__(self, *answers: BaseException | dict[str, str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> dict[str, str]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_busy_and_silent_servers_are_tried_again_with_growing_waits() -> None:
    busy = AgentCallError(503, "unavailable", "the DNS server did not reload: try again")
    answers = Answers(busy, TimeoutError("timed out"), socket.gaierror("no address"), busy, {"node": "n1"})
    waits: list[float] = []
    assert _register_until(answers, retry_for_s=300, sleep=waits.append) == {"node": "n1"}
    assert answers.calls == 5 and waits == [1, 2, 4, 8]


@pytest.mark.parametrize("status", [400, 403, 409, 413, 502])
def test_a_refusal_is_final_at_once(status: int) -> None:
    answers = Answers(AgentCallError(status, "refused", "no"), {"node": "n1"})
    waits: list[float] = []
    with pytest.raises(AgentCallError) as refused:
        _register_until(answers, retry_for_s=300, sleep=waits.append)
    assert refused.value.status == status and answers.calls == 1 and waits == []


def test_tries_stop_when_the_time_is_spent_with_the_last_answer() -> None:
    answers = Answers(*[AgentCallError(503, "unavailable", f"try {n}") for n in range(20)])
    waits: list[float] = []
    with pytest.raises(AgentCallError, match="try"):
        _register_until(answers, retry_for_s=0, sleep=waits.append)
    assert answers.calls == 1 and waits == []
    silent = Answers(ConnectionRefusedError("refused"))
    with pytest.raises(ConnectionRefusedError):
        _register_until(silent, retry_for_s=0, sleep=waits.append)


def test_waits_grow_to_thirty_seconds_at_most() -> None:
    answers = Answers(*[AgentCallError(503, "unavailable", "busy")] * 8, {"node": "n1"})
    waits: list[float] = []
    assert _register_until(answers, retry_for_s=10_000, sleep=waits.append) == {"node": "n1"}
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
