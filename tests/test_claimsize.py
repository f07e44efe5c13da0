"""claimsize: a runner claims about a quarter second of its own work, between its concurrency and 500."""

from __future__ import annotations

from runner.claimsize import ClaimSize


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_claim_is_the_concurrency() -> None:
    assert ClaimSize(16, clock=Clock()).size() == 16


def test_later_claims_follow_the_completed_rate() -> None:
    """300 entities a second (50 ms latency, 16 at once): a quarter second is 75 entities."""
    clock = Clock()
    claims = ClaimSize(16, clock=clock)
    claims.size()
    clock.now += 2.0
    claims.done(600)
    assert claims.size() == 75


def test_claims_stay_between_the_concurrency_and_the_ceiling() -> None:
    clock = Clock()
    slow, fast = ClaimSize(16, clock=clock), ClaimSize(16, ceiling=500, clock=clock)
    slow.size()
    fast.size()
    clock.now += 10.0
    slow.done(20)  # 2 a second (a tight rate limit): still one entity per fetcher
    fast.done(200_000)  # 20,000 a second: one claim statement per 500
    assert (slow.size(), fast.size()) == (16, 500)
