"""The retry budget, what an answer means, the governor and the counters (``_governor``,
``_retry``, ``_stats``), by direct calls or on a clock the tests move by hand.

No server and no real waiting: a request passes the governor's slot and ends with an exception
raised in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import msgspec
import pytest

from phala_async import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    PhalaError,
    ResponseTooLargeError,
)
from phala_async._errors import (
    APIProxyError,
    APITLSError,
    APIUnreachableError,
    error_for_status,
)
from phala_async._governor import Governor, RetryBudget, Slot, Verdict
from phala_async._retry import Outcome, answered, classify
from phala_async._stats import ClientStats, Counters


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _status(status: int, retry_after: float | None = None) -> PhalaError:
    return error_for_status(status, b"", {}, cvm_id=7, retry_after=retry_after)


def _no_answer(error: APIConnectionError) -> APIConnectionError:
    """``error``, marked as having got nothing back at all."""
    error.no_answer = True
    return error


# -- the retry budget ----------------------------------------------------------------------------


def _budget_with(
    outcomes: list[bool], *, clock: FakeClock | None = None, **options: int
) -> RetryBudget:
    budget = RetryBudget(clock=clock or FakeClock(), **options)
    for outcome in outcomes:
        budget.record(outcome)
    return budget


def test_budget_allows_retries_before_min_samples() -> None:
    """Nineteen failures, one short of ``min_samples``, still allow a retry."""
    budget = _budget_with([False] * 19)
    assert budget.verdict() is Verdict.ALLOW


def test_budget_denies_retries_when_nothing_succeeds() -> None:
    """Twenty failures out of twenty deny retries."""
    budget = _budget_with([False] * 20)
    assert budget.verdict() is Verdict.DENY
    assert budget.success_ratio == 0.0


def test_a_window_of_failures_after_a_recent_success_defers_until_dead_after() -> None:
    """A success, then a whole window of failures (a capped server's 503s come back far faster
    than its successes): retries are deferred, not denied, until the success is ``dead_after``
    (5 s) old; then the API counts as dead and they are denied."""
    clock = FakeClock()
    budget = _budget_with([True], clock=clock)
    for _ in range(100):
        budget.record(False)
    verdicts = [budget.verdict()]
    clock.now += 4.9
    verdicts.append(budget.verdict())
    clock.now += 0.1
    verdicts.append(budget.verdict())
    assert budget.success_ratio == 0.0
    assert verdicts == [Verdict.DEFER, Verdict.DEFER, Verdict.DENY]


def test_budget_allows_retries_when_a_fifth_fails() -> None:
    """A window where one request in five fails keeps retries allowed."""
    budget = _budget_with([True, True, True, True, False] * 20)
    assert budget.success_ratio == 0.8
    assert budget.verdict() is Verdict.ALLOW


def test_budget_defers_below_three_tenths_and_allows_at_three_tenths() -> None:
    """Three in ten succeeding allows retries; one fewer success defers them."""
    at = _budget_with([True] * 30 + [False] * 70)
    below = _budget_with([True] * 29 + [False] * 71)
    assert at.success_ratio == 0.3
    assert at.verdict() is Verdict.ALLOW
    assert below.success_ratio == 0.29
    assert below.verdict() is Verdict.DEFER


def test_budget_only_remembers_its_window() -> None:
    """Failures older than the last ``window`` outcomes are forgotten."""
    budget = _budget_with([False] * 100 + [True] * 10, window=10, min_samples=5)
    assert budget.success_ratio == 1.0
    assert budget.verdict() is Verdict.ALLOW


def test_budget_recovers_when_successes_return() -> None:
    """After a dead spell denies retries, the first successes defer them instead, and enough
    to reach three tenths of the window allow them again."""
    budget = _budget_with([False] * 100)
    dead = budget.verdict()
    budget.record(True)
    first_success = budget.verdict()
    for _ in range(28):
        budget.record(True)
    just_below = budget.verdict()
    budget.record(True)
    assert (dead, first_success, just_below) == (Verdict.DENY, Verdict.DEFER, Verdict.DEFER)
    assert budget.success_ratio == 0.3
    assert budget.verdict() is Verdict.ALLOW


@pytest.mark.parametrize(
    ("failures", "verdict"),
    [
        pytest.param(4, Verdict.ALLOW, id="4-unanswered"),
        pytest.param(5, Verdict.DENY, id="5-unanswered"),
    ],
)
def test_budget_denies_once_an_api_that_never_answered_failed_unreachable_after_times(
    failures: int, verdict: Verdict
) -> None:
    """While the API never answered, 5 transport failures (``unreachable_after``: "a handful")
    deny retries before ``min_samples`` are known; 4 do not."""
    budget = RetryBudget()
    for _ in range(failures):
        budget.record(False, answered=False)
    assert budget.answered is False
    assert budget.verdict() is verdict


def test_unanswered_failures_do_not_deny_once_the_api_answered() -> None:
    """After one HTTP answer, however long ago, 18 unanswered failures (below ``min_samples``)
    allow retries."""
    budget = RetryBudget()
    for _ in range(5):
        budget.record(False, answered=False)
    budget.record(False, answered=True)
    for _ in range(13):
        budget.record(False, answered=False)
    assert budget.answered is True
    assert budget.verdict() is Verdict.ALLOW


def test_trickle_grants_one_deferred_retry_per_turn() -> None:
    """At 10 a second, a turn is taken at once, the next is 0.1 s away (not taken by asking),
    and it is granted once 0.1 s has passed."""
    clock = FakeClock()
    budget = RetryBudget(trickle=10.0, clock=clock)
    start = clock.now
    first = budget.trickle_wait()
    waits = [budget.trickle_wait()]
    clock.now = start + 0.05
    waits.append(budget.trickle_wait())
    clock.now = start + 0.1
    second = budget.trickle_wait()
    assert (first, second) == (0.0, 0.0)
    assert waits == pytest.approx([0.1, 0.05])
    assert budget.trickle_wait() == pytest.approx(0.1)


def test_asking_for_a_verdict_changes_nothing() -> None:
    """A thousand ``verdict()`` calls on a denying budget change neither the ratio nor the
    answer; the governor's ``denies_retries()`` counts no refusal either."""
    budget = _budget_with([False] * 30)
    verdicts = {budget.verdict() for _ in range(1000)}
    governor = Governor(concurrency=4)
    assert governor.budget is not None
    for _ in range(30):
        governor.budget.record(False)
    governed = {governor.denies_retries() for _ in range(1000)}
    assert (verdicts, budget.success_ratio) == ({Verdict.DENY}, 0.0)
    assert (governed, governor.snapshot().retries_denied) == ({True}, 0)


# -- what an answer means ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        pytest.param(None, Outcome.OK, id="success"),
        pytest.param(_status(404), Outcome.OK, id="404"),
        pytest.param(_status(403), Outcome.OK, id="403"),
        pytest.param(_status(422), Outcome.OK, id="422"),
        pytest.param(DecodeError("bad body", cvm_id=7), Outcome.OK, id="decode-error"),
        pytest.param(ResponseTooLargeError("big", cvm_id=7, limit=1), Outcome.OK, id="too-large"),
        pytest.param(_status(429), Outcome.THROTTLED, id="429"),
        pytest.param(_status(429, 1.0), Outcome.THROTTLED, id="429-retry-after"),
        pytest.param(_status(503, 1.0), Outcome.THROTTLED, id="503-retry-after"),
        pytest.param(_status(503, 0.0), Outcome.THROTTLED, id="503-retry-after-0"),
        pytest.param(_status(503), Outcome.OVERLOADED, id="503"),
        pytest.param(_status(500), Outcome.OVERLOADED, id="500"),
        pytest.param(_status(502), Outcome.OVERLOADED, id="502"),
        pytest.param(_status(504), Outcome.OVERLOADED, id="504"),
        pytest.param(_status(408), Outcome.FAILED, id="408"),
        pytest.param(_status(425), Outcome.FAILED, id="425"),
        pytest.param(APIConnectionError("reset", cvm_id=7), Outcome.FAILED, id="connection"),
        pytest.param(
            APIProxyError("bad gateway", status_code=502, proxy="http://proxy:3128", cvm_id=7),
            Outcome.FAILED,
            id="proxy-502",
        ),
        pytest.param(APITimeoutError("slow", cvm_id=7), Outcome.TIMEOUT, id="timeout"),
        pytest.param(_status(401), Outcome.DOOMED, id="401"),
        pytest.param(APITLSError("untrusted", cvm_id=7), Outcome.DOOMED, id="tls"),
        pytest.param(
            APIProxyError("refused", status_code=407, proxy="http://proxy:3128", cvm_id=7),
            Outcome.DOOMED,
            id="proxy-407",
        ),
        pytest.param(
            APIUnreachableError("down", host="api", port=443, reason="refused", cvm_id=7),
            Outcome.DOOMED,
            id="unreachable",
        ),
        pytest.param(ClientClosedError(), Outcome.UNKNOWN, id="client-closed"),
        pytest.param(asyncio.CancelledError(), Outcome.UNKNOWN, id="cancelled"),
        pytest.param(ValueError("not ours"), Outcome.UNKNOWN, id="foreign-error"),
    ],
)
def test_classify_says_what_an_answer_means(error: BaseException | None, outcome: Outcome) -> None:
    """Each kind of answer maps to the outcome the limits learn from."""
    assert classify(error) is outcome


@pytest.mark.parametrize(
    ("error", "got_answer"),
    [
        pytest.param(None, True, id="success"),
        pytest.param(_status(500), True, id="500"),
        pytest.param(DecodeError("bad body", cvm_id=7), True, id="decode-error"),
        pytest.param(APIConnectionError("cut short", cvm_id=7), True, id="connection-mid-answer"),
        pytest.param(APITimeoutError("slow body", cvm_id=7), True, id="timeout-mid-answer"),
        pytest.param(_no_answer(APIConnectionError("refused", cvm_id=7)), False, id="refused"),
        pytest.param(_no_answer(APITimeoutError("silent", cvm_id=7)), False, id="silent-timeout"),
    ],
)
def test_answered_is_false_only_when_nothing_came_back(
    error: BaseException | None, got_answer: bool
) -> None:
    """Only a transport failure marked ``no_answer`` counts as the API not answering."""
    assert answered(error) is got_answer


# -- the governor --------------------------------------------------------------------------------


async def _request(governor: Governor, error: PhalaError | None) -> Slot:
    """One request through the governor's slot, ending with ``error`` (None: a success)."""
    slot = governor.slot()
    with contextlib.suppress(PhalaError):
        async with slot:
            if error is not None:
                raise error
    return slot


@pytest.mark.parametrize(
    ("error", "outcome", "counted"),
    [
        pytest.param(None, Outcome.OK, (0, 0, 0, 0), id="success"),
        pytest.param(_status(404), Outcome.OK, (0, 0, 0, 0), id="404"),
        pytest.param(_status(429), Outcome.THROTTLED, (1, 1, 0, 0), id="429"),
        pytest.param(_status(503, 0.0), Outcome.THROTTLED, (0, 1, 0, 0), id="503-retry-after"),
        pytest.param(_status(500), Outcome.OVERLOADED, (0, 0, 1, 0), id="500"),
        pytest.param(
            APITimeoutError("slow", cvm_id=7), Outcome.TIMEOUT, (0, 0, 0, 1), id="timeout"
        ),
        pytest.param(
            APIConnectionError("reset", cvm_id=7), Outcome.FAILED, (0, 0, 0, 0), id="reset"
        ),
    ],
)
async def test_the_governor_judges_and_counts_each_ending_once(
    error: PhalaError | None, outcome: Outcome, counted: tuple[int, int, int, int]
) -> None:
    """A request's ending sets its slot's outcome and counts once in rate_limited, throttled,
    overloaded or timeouts, as it means; the request leaves nothing in flight."""
    governor = Governor(concurrency=4)
    slot = await _request(governor, error)
    stats = governor.snapshot()
    assert slot.outcome is outcome
    assert (stats.rate_limited, stats.throttled, stats.overloaded, stats.timeouts) == counted
    assert (stats.requests, stats.in_flight) == (1, 0)


async def test_a_throttle_keeps_its_retry_after_on_the_slot() -> None:
    """A 429 with Retry-After 0 leaves the wait on the slot, for the limits to read."""
    governor = Governor(concurrency=8)
    slot = await _request(governor, _status(429, 0.0))
    assert (slot.outcome, slot.retry_after) == (Outcome.THROTTLED, 0.0)


async def test_throttles_are_left_out_of_the_retry_budget() -> None:
    """Of a success, a 429 and a 500, the budget records two, one of them a success."""
    governor = Governor(concurrency=4)
    for error in (None, _status(429), _status(500)):
        await _request(governor, error)
    assert governor.budget is not None
    assert governor.budget.success_ratio == 0.5


async def test_the_governor_knows_whether_the_api_ever_answered() -> None:
    """Refused connections leave the API unanswered; a 500 marks it answered for good."""
    governor = Governor(concurrency=4)
    await _request(governor, _no_answer(APIConnectionError("refused", cvm_id=7)))
    before = governor.answered
    await _request(governor, _status(500))
    await _request(governor, _no_answer(APIConnectionError("refused", cvm_id=7)))
    assert (before, governor.answered) == (False, True)


@pytest.mark.parametrize(
    ("first_answer", "denied"),
    [
        pytest.param(None, True, id="never-answered"),
        pytest.param(_status(404), False, id="answered-once"),
    ],
)
async def test_five_refused_connections_deny_retries_only_if_the_api_never_answered(
    first_answer: PhalaError | None, denied: bool
) -> None:
    """Five refused connections make the governor deny retries, unless one answer came first."""
    governor = Governor(concurrency=4)
    if first_answer is not None:
        await _request(governor, first_answer)
    for _ in range(5):
        await _request(governor, _no_answer(APIConnectionError("refused", cvm_id=7)))
    assert governor.denies_retries() is denied


def test_admit_retry_is_none_when_retries_are_allowed() -> None:
    """A fresh governor, and one without a retry budget, admit a retry at once (no awaitable)."""
    budgeted = Governor(concurrency=4)
    unbudgeted = Governor(concurrency=4, retry_budget=False)
    assert budgeted.admit_retry() is None
    assert unbudgeted.admit_retry() is None
    assert (unbudgeted.budget, unbudgeted.denies_retries()) == (None, False)


async def test_a_denied_retry_is_refused_and_counted() -> None:
    """With twenty failures recorded, ``admit_retry()`` resolves to False and counts one
    denied retry, none deferred."""
    governor = Governor(concurrency=4)
    governor.budget = _budget_with([False] * 20)
    waiter = governor.admit_retry()
    assert waiter is not None
    admitted = await waiter
    stats = governor.snapshot()
    assert admitted is False
    assert (stats.retries_denied, stats.retries_deferred) == (1, 0)


def _deferring_governor(clock: FakeClock) -> Governor:
    """A governor whose budget defers (a quarter of 20 succeeded) and whose trickle turn was
    just taken, on ``clock``."""
    governor = Governor(concurrency=4)
    governor.budget = _budget_with([True] * 5 + [False] * 15, clock=clock)
    assert governor.budget.verdict() is Verdict.DEFER
    assert governor.budget.trickle_wait() == 0.0  # another deferred retry took this turn
    return governor


async def test_a_deferred_retry_waits_for_the_next_trickle_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under DEFER, a retry sleeps until the next trickle turn (0.1 s at 10 a second), then is
    admitted, counted once as deferred."""
    clock = FakeClock()
    governor = _deferring_governor(clock)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    waiter = governor.admit_retry()
    assert waiter is not None
    admitted = await waiter
    assert admitted is True
    assert slept == pytest.approx([0.1])
    assert governor.snapshot().retries_deferred == 1


async def test_a_retry_deferred_twice_counts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred retry that loses its turn to another and waits a second time counts once in
    ``retries_deferred``."""
    clock = FakeClock()
    governor = _deferring_governor(clock)
    budget = governor.budget
    assert budget is not None
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 1:
            assert budget.trickle_wait() == 0.0  # another retry takes the turn first

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    waiter = governor.admit_retry()
    assert waiter is not None
    admitted = await waiter
    assert admitted is True
    assert slept == pytest.approx([0.1, 0.1])
    assert governor.snapshot().retries_deferred == 1


async def test_a_deferred_retry_goes_as_soon_as_the_ratio_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry deferred while successes return is admitted by the recovered ratio after its
    first wait."""
    clock = FakeClock()
    governor = _deferring_governor(clock)
    budget = governor.budget
    assert budget is not None
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        for _ in range(20):
            budget.record(True)  # answers that came meanwhile
        assert budget.trickle_wait() > 0  # the turn is not due: only the ratio can admit

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    waiter = governor.admit_retry()
    assert waiter is not None
    admitted = await waiter
    assert (admitted, len(slept), budget.verdict()) == (True, 1, Verdict.ALLOW)


# -- the counters --------------------------------------------------------------------------------


def test_call_ended_counts_ok_failed_by_class_and_cancelled() -> None:
    """Two successes, two 404s, a timeout and a cancellation count as 2 ok, failed by class
    name, and 1 cancelled."""
    counters = Counters()
    for error in (
        None,
        _status(404),
        APITimeoutError("slow", cvm_id=7),
        None,
        asyncio.CancelledError(),
        _status(404),
    ):
        counters.call_ended(error)
    assert (counters.ok, counters.failed, counters.cancelled) == (
        2,
        {"NotFoundError": 2, "APITimeoutError": 1},
        1,
    )


def test_snapshot_is_a_copy_that_does_not_change() -> None:
    """A snapshot keeps its counts when the governor counts more, its ``failed`` counter is its
    own, and it cannot be assigned to."""
    governor = Governor(concurrency=4)
    governor.counters.call_ended(None)
    governor.counters.call_ended(_status(404))
    before = governor.snapshot()
    governor.counters.call_ended(None)
    governor.counters.call_ended(_status(404))
    governor.counters.retry()
    before.failed["NotFoundError"] += 100  # the snapshot's own copy
    after = governor.snapshot()
    assert (before.ok, before.retries) == (1, 0)
    assert (after.ok, after.retries, after.failed) == (2, 1, {"NotFoundError": 2})
    with pytest.raises(AttributeError):
        before.ok = 5  # type: ignore[misc]


def test_a_snapshot_serialises_to_json() -> None:
    """``to_dict()`` gives plain values that ``json.dumps`` takes, ``failed`` a plain dict, the
    same as msgspec's own encoding."""
    governor = Governor(concurrency=16)
    governor.counters.call_ended(_status(404))
    stats = governor.snapshot()
    as_dict = stats.to_dict()
    decoded = json.loads(json.dumps(as_dict))
    assert type(as_dict["failed"]) is dict
    assert decoded == msgspec.json.decode(msgspec.json.encode(stats))
    assert (decoded["failed"], decoded["window"], decoded["send_rate"]) == (
        {"NotFoundError": 1},
        4,
        None,
    )
    assert isinstance(stats, ClientStats)


@pytest.mark.parametrize(
    ("adaptive", "windows"),
    [
        pytest.param(True, (4, 2), id="adaptive-starts-at-4-and-shrinks"),
        pytest.param(False, (16, 16), id="fixed-at-concurrency"),
    ],
)
async def test_a_snapshot_reports_the_window_in_force(
    adaptive: bool, windows: tuple[int, int]
) -> None:
    """The snapshot's window is the adaptive window's limit, which a 429 asking for a wait
    shrinks, or ``concurrency`` with adaptation off, which a 429 leaves alone."""
    governor = Governor(concurrency=16, adaptive=adaptive)
    before = governor.snapshot().window
    await _request(governor, _status(429, retry_after=0.01))
    assert (before, governor.snapshot().window) == windows


async def test_a_request_asks_only_the_limits_that_could_hold_it_back_now() -> None:
    """Once the first contact is open, an unpaced client with no pause asks the window alone; a
    pause puts the gate back until a request sees it over, and pacing puts the pacer back (and
    among the limits told of a start) for good."""
    governor = Governor(concurrency=4)
    await _request(governor, None)  # the first contact opens on an answer
    alone = governor.quick_limits
    governor.gate.pause_for(-1.0)  # a pause, already over by the time anyone looks
    with_gate = governor.quick_limits
    await _request(governor, None)  # sees the pause over
    after_pause = governor.quick_limits
    assert governor.pacer is not None
    governor.pacer.on_throttle(0, asked_to_wait=True)  # paced from the success just counted
    assert (alone, with_gate, after_pause) == (
        (governor.window,),
        (governor.gate, governor.window),
        (governor.window,),
    )
    assert governor.quick_limits == (governor.pacer, governor.window)
    assert governor.started_hooks == (governor.pacer, governor.window)


async def test_a_request_that_waited_checks_the_pause_again_before_it_is_sent() -> None:
    """A request that waited for the window while a pause began waits for the pause too: the
    pause is checked again after any wait, and nothing is sent until it is over."""
    governor = Governor(concurrency=1, adaptive=False)
    await _request(governor, None)  # open the first contact
    holder = governor.slot()
    await holder.__aenter__()  # the one place is taken
    sent: list[str] = []

    async def waiting() -> None:
        async with governor.slot():
            sent.append("sent")

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)  # it waits for the window now
    governor.gate.pause_for(0.05)  # a pause begins while it waits
    await holder.__aexit__(None, None, None)  # the place is handed to it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    during_pause = list(sent)
    await asyncio.wait_for(task, 5)
    assert (during_pause, sent) == ([], ["sent"])
    assert governor.snapshot().in_flight == 0
