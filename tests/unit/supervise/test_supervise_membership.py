"""colo.supervise.recovery.membership: each agent against its plan at one GPU reading (an MPS client, a plain
CUDA context, or not listed yet), and the count of readings in a row that makes colo act."""

from __future__ import annotations

from colo.supervise.recovery.membership import MISMATCH_READINGS, Membership, MembershipWatch, judge

LISTED = {10: ("GPU-a", True), 11: ("GPU-a", True), 20: ("GPU-a", False), 30: ("GPU-b", True)}


def test_judge_reads_the_agents_own_processes_only() -> None:
    client = judge("enc", "GPU-a", True, [10, 11, 99], LISTED)  # 99: a child without a CUDA context
    assert client == Membership("enc", "GPU-a", True, True) and not client.differs
    plain = judge("gen", "GPU-a", True, [20], LISTED)
    assert plain.mps_client is False and plain.differs
    mixed = judge("mix", "GPU-a", True, [10, 20], LISTED)  # one process of it outside the server is enough
    assert mixed.mps_client is False and mixed.differs
    loading = judge("slow", "GPU-a", True, [77, 78], LISTED)
    assert loading.mps_client is None and not loading.differs  # not listed yet: nothing is judged
    assert judge("none", None, True, [], LISTED).mps_client is None


def test_a_time_sliced_agent_that_is_a_client_differs_too() -> None:
    ts = judge("ts", "GPU-b", False, [30], LISTED)
    assert ts.differs and "plan says time-sliced" in ts.detail() and "GPU-b" in ts.detail()
    assert not judge("ts", "GPU-a", False, [20], LISTED).differs


def test_detail_says_what_is_not_enforced_and_where() -> None:
    text = judge("gen", "GPU-a", True, [20], LISTED).detail()
    assert text.startswith("gen runs as a plain CUDA context") and "MPS server of GPU-a" in text
    assert "memory limit and SM share are not enforced" in text
    assert "MPS server of its GPU" in Membership("gen", None, True, False).detail()


def test_the_watch_acts_after_readings_in_a_row_and_starts_again() -> None:
    watch = MembershipWatch()
    bad, good = Membership("a", "GPU-a", True, False), Membership("a", "GPU-a", True, True)
    verdicts = [watch.note(bad) for _ in range(MISMATCH_READINGS)]
    assert verdicts == [False] * (MISMATCH_READINGS - 1) + [True]
    assert not watch.note(bad)  # the count started again after acting
    assert not watch.note(good)  # one good reading between two bad ones: not in a row
    assert [watch.note(bad) for _ in range(MISMATCH_READINGS)][-1] is True
    watch.note(bad)
    watch.forget("a")  # the agent is recovered: its count starts again
    assert [watch.note(bad) for _ in range(MISMATCH_READINGS)][-1] is True
    unknown = Membership("a", "GPU-a", True, None)
    watch.note(bad)
    assert not watch.note(unknown)  # not listed is not a miss, and it ends the run
    assert not watch.note(bad)


def test_the_watch_counts_each_agent_apart() -> None:
    watch = MembershipWatch()
    a, b = Membership("a", "GPU-a", True, False), Membership("b", "GPU-a", True, False)
    for _ in range(MISMATCH_READINGS - 1):
        assert not watch.note(a) and not watch.note(b)
    assert watch.note(a) and not watch.note(Membership("b", "GPU-a", True, True))
    assert not watch.note(b)  # b's run was broken by its good reading; a's verdict did not touch it
