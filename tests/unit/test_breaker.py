"""The circuit breaker state machine on its own, with a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from streamflow.clock import ManualClock
from streamflow.runtime.breaker import CLOSED, HALF_OPEN, OPEN, STATE_VALUE, CircuitBreaker
from streamflow.topology.models import BreakerConfig


def make(
    threshold: int = 3, reset: float = 10.0, half_open_calls: int = 1
) -> tuple[CircuitBreaker, ManualClock, list[tuple[str, str]]]:
    clock = ManualClock()
    changes: list[tuple[str, str]] = []
    config = BreakerConfig(
        failure_threshold=threshold, reset_timeout=reset, half_open_calls=half_open_calls
    )
    breaker = CircuitBreaker(config, lambda old, new: changes.append((old, new)), clock=clock)
    return breaker, clock, changes


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        assert breaker.before_call() is None
        breaker.failure()
    assert breaker.state == OPEN


def test_starts_closed_and_lets_calls_through() -> None:
    breaker, _, changes = make()
    assert breaker.state == CLOSED
    for _ in range(20):
        assert breaker.before_call() is None
        breaker.success()
    assert breaker.state == CLOSED
    assert changes == []


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _, changes = make(threshold=3)
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED
    assert breaker.before_call() is None
    breaker.failure()
    assert breaker.state == OPEN
    assert changes == [(CLOSED, OPEN)]


def test_a_success_resets_the_failure_count() -> None:
    breaker, _, changes = make(threshold=3)
    for _ in range(5):  # two failures, a success, two failures, ... never three in a row
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert breaker.state == CLOSED
    assert changes == []
    breaker.failure()
    breaker.failure()
    breaker.failure()
    assert breaker.state == OPEN


async def test_open_refuses_calls_and_says_how_long_to_wait() -> None:
    breaker, clock, _ = make(reset=10.0)
    open_it(breaker)
    wait = breaker.before_call()
    assert wait == pytest.approx(10.0)
    await clock.advance(4.0)
    wait = breaker.before_call()
    assert wait == pytest.approx(6.0)
    await clock.advance(5.9)
    wait = breaker.before_call()
    assert wait is not None and wait == pytest.approx(0.1)
    assert breaker.state == OPEN


async def test_half_open_after_reset_timeout_allows_only_the_trial_calls() -> None:
    breaker, clock, changes = make(reset=10.0, half_open_calls=1)
    open_it(breaker)
    await clock.advance(10.0)
    assert breaker.before_call() is None  # the trial call
    assert breaker.state == HALF_OPEN
    # while the trial is out, nobody else goes: a short wait, well under reset_timeout
    wait = breaker.before_call()
    assert wait is not None and 0 < wait < 10.0
    assert breaker.before_call() is not None
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


async def test_half_open_with_several_trial_calls() -> None:
    breaker, clock, _ = make(reset=1.0, half_open_calls=3)
    open_it(breaker)
    await clock.advance(1.0)
    assert [breaker.before_call() for _ in range(3)] == [None, None, None]
    assert breaker.before_call() is not None
    assert breaker.state == HALF_OPEN


async def test_trial_success_closes() -> None:
    breaker, clock, changes = make(reset=10.0)
    open_it(breaker)
    await clock.advance(10.5)
    assert breaker.before_call() is None
    breaker.success()
    assert breaker.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # closed again with a fresh count: it takes the full threshold to open once more
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED
    for _ in range(5):
        assert breaker.before_call() is None


async def test_trial_failure_reopens_for_a_full_reset_timeout() -> None:
    breaker, clock, changes = make(threshold=3, reset=10.0)
    open_it(breaker)
    await clock.advance(10.0)
    assert breaker.before_call() is None
    breaker.failure()  # one failure is enough while half-open
    assert breaker.state == OPEN
    wait = breaker.before_call()
    assert wait == pytest.approx(10.0)  # the timeout counts from the re-opening
    await clock.advance(9.0)
    assert breaker.before_call() is not None
    await clock.advance(1.0)
    assert breaker.before_call() is None
    assert breaker.state == HALF_OPEN
    assert changes == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
    ]


async def test_a_second_half_open_period_gets_fresh_trials() -> None:
    breaker, clock, _ = make(reset=2.0, half_open_calls=1)
    open_it(breaker)
    await clock.advance(2.0)
    assert breaker.before_call() is None
    breaker.failure()
    await clock.advance(2.0)
    assert breaker.before_call() is None  # the trial budget was reset on half-open
    breaker.success()
    assert breaker.state == CLOSED


async def test_full_cycle_without_callback_and_state_values() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=1, reset_timeout=0.5), clock=clock
    )  # no on_change: must not fail
    breaker.failure()
    assert breaker.state == OPEN
    await clock.advance(0.5)
    assert breaker.before_call() is None
    breaker.success()
    assert breaker.state == CLOSED
    assert STATE_VALUE == {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def test_config_from_yaml_durations() -> None:
    config = BreakerConfig.model_validate({"failure_threshold": 3, "reset_timeout": "1s"})
    assert config.reset_timeout == 1.0
    assert config.half_open_calls == 1
    with pytest.raises(ValueError):
        BreakerConfig.model_validate({"failure_threshold": 0})
    with pytest.raises(ValueError):
        BreakerConfig.model_validate({"colour": "red"})
