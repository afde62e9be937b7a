"""Rate limits and failure counters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pigeon.policy.limits import FailureCounter, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_burst_then_refill() -> None:
    clock = Clock()
    r = RateLimiter(6, clock=clock)  # 6 a minute: one token every 10 s
    assert [r.allow("a") for _ in range(7)] == [True] * 6 + [False]
    assert r.allow("b")  # keys are independent
    clock.now += 9.9
    assert not r.allow("a")
    clock.now += 0.2
    assert r.allow("a")
    assert not r.allow("a")
    clock.now += 3600
    assert [r.allow("a") for _ in range(7)] == [True] * 6 + [False]  # never above the burst


def test_rate_limiter_zero_is_off() -> None:
    r = RateLimiter(0)
    assert all(r.allow("a") for _ in range(10_000))
    assert len(r) == 0


def test_rate_limiter_is_bounded() -> None:
    clock = Clock()
    r = RateLimiter(1, clock=clock, max_keys=100)
    for i in range(1000):
        r.allow(f"k{i}")
        clock.now += 0.001
    assert len(r) <= 100


def test_failure_counter_threshold_window_block() -> None:
    clock = Clock()
    f = FailureCounter(3, window=60.0, block_time=100.0, clock=clock)
    assert [f.record("ip") for _ in range(2)] == [1, 2]
    assert not f.blocked("ip")
    assert f.record("ip") == 3
    assert f.blocked("ip")
    clock.now += 99
    assert f.blocked("ip")
    clock.now += 2
    assert not f.blocked("ip")
    assert f.failures("ip") == 0  # the failures left the window too


def test_failure_counter_reset_keeps_a_block() -> None:
    clock = Clock()
    f = FailureCounter(2, window=60.0, block_time=100.0, clock=clock)
    f.record("a")
    f.reset("a")
    assert f.failures("a") == 0 and len(f) == 0
    f.record("a")
    f.record("a")
    f.reset("a")
    assert f.blocked("a")


def test_failure_counter_zero_threshold_never_blocks() -> None:
    f = FailureCounter(0, window=60.0, block_time=100.0)
    for _ in range(100):
        f.record("a")
    assert not f.blocked("a")


def test_failure_counter_is_bounded() -> None:
    clock = Clock()
    f = FailureCounter(5, window=10.0, block_time=10.0, clock=clock, max_keys=50)
    for i in range(1000):
        f.record(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.5
    assert len(f) <= 50


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 30)), max_size=200),
       st.integers(1, 20))
def test_rate_limiter_never_allows_more_than_the_budget(
    events: list[tuple[str, float]], per_minute: int
) -> None:
    clock = Clock()
    r = RateLimiter(per_minute, clock=clock)
    allowed: dict[str, list[float]] = {}
    for key, step in events:
        clock.now += step
        if r.allow(key):
            allowed.setdefault(key, []).append(clock.now)
    elapsed = clock.now - 50.0
    for times in allowed.values():
        assert len(times) <= per_minute + elapsed * per_minute / 60.0 + 1e-6
