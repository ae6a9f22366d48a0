"""What a client reports about its answers: one DEBUG log line per answer (``-vv``) and, when
OpenTelemetry is installed, metrics (``pip install 'phala-async[otel]'``).

:class:`AnswerObserver` is the one hook of the request path: the client awaits each send
through :meth:`AnswerObserver.observe`, which times it, logs the status and duration at DEBUG,
and records the duration histogram and the requests counter. The other instruments are
observable: they read the client's :class:`ClientStats` snapshot when the reader collects.

Without ``opentelemetry-api`` nothing is imported and nothing is recorded; with it, the
instruments go to ``meter_provider`` or, by default, the global meter provider (a no-op until
the application sets one). No attribute carries a credential, an id or a path: only the status
code, the status class and the API's host.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ._errors import ConfigurationError, PhalaError
from ._stats import ClientStats
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["DURATION_BUCKETS", "AnswerObserver", "answer_observer"]

logger = logging.getLogger("phala_async")

#: Bucket bounds of the request-duration histogram, in seconds (OpenTelemetry's HTTP advice).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

_INSTALL = "pip install 'phala-async[otel]'"
#: The global meter providers OpenTelemetry's API has before an application sets one.
_UNSET_PROVIDERS = frozenset({"_ProxyMeterProvider", "NoOpMeterProvider"})


class _Answered(Protocol):
    """What the observer reads of an answer: its HTTP status."""

    @property
    def status(self) -> int: ...


_Answer = TypeVar("_Answer", bound=_Answered)


class AnswerObserver:
    """Times each request of one client, logs its answer at DEBUG and records its metrics."""

    __slots__ = ("_attributes", "_duration", "_requests", "recording")

    def __init__(self, meter: Any | None, server: str) -> None:
        self._attributes = {"server.address": server}
        #: Whether metrics are recorded (else only the DEBUG log asks for :meth:`observe`); an
        #: attribute rather than a property, since the request path reads it every time.
        self.recording = meter is not None
        self._duration: Any | None = None
        self._requests: Any | None = None
        if meter is not None:
            self._duration = meter.create_histogram(
                "http.client.request.duration",
                unit="s",
                description="Seconds from sending a request to the whole answer, per attempt",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            self._requests = meter.create_counter(
                "phala_async.requests",
                unit="{request}",
                description="Requests answered, by status class (2xx, 4xx, 5xx; none: no answer)",
            )

    async def observe(self, sending: Awaitable[_Answer], path: str) -> _Answer:
        """Await ``sending`` (one request), then log and record its answer or its failure.

        ``path`` is logged at DEBUG (it names the CVM, never a credential) and never recorded.
        """
        started = time.perf_counter()
        try:
            answer = await sending
        except PhalaError as exc:
            self._done(None, time.perf_counter() - started, path, type(exc).__name__)
            raise
        self._done(answer.status, time.perf_counter() - started, path, None)
        return answer

    def _done(self, status: int | None, seconds: float, path: str, error: str | None) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            if status is None:
                logger.debug("GET %s: no answer (%s) after %.3fs", path, error, seconds)
            else:
                logger.debug("GET %s: HTTP %d in %.3fs", path, status, seconds)
        if self._duration is None or self._requests is None:
            return
        attributes: dict[str, Any] = dict(self._attributes)
        if status is None:
            attributes["error.type"] = error
            status_class = "none"
        else:
            attributes["http.response.status_code"] = status
            status_class = f"{status // 100}xx"
        self._duration.record(seconds, attributes)
        self._requests.add(1, {**self._attributes, "http.status_class": status_class})


def answer_observer(
    meter_provider: object | None, base_url: str, read_stats: Callable[[], ClientStats]
) -> AnswerObserver:
    """The observer of a new client, with its metrics registered when OpenTelemetry is there.

    Args:
        meter_provider: an ``opentelemetry.metrics.MeterProvider``; None: the global one, if
            the application had set one when the client was made (else nothing is recorded).
        base_url: the API prefix; only its host and port are recorded.
        read_stats: a bound method that takes the client's stats snapshot; it is held weakly.

    Raises:
        ConfigurationError: ``meter_provider`` given without OpenTelemetry installed, or not a
            meter provider.
    """
    parts = urlsplit(base_url)
    server = parts.hostname or ""
    if parts.port is not None:
        server = f"{server}:{parts.port}"
    try:
        from opentelemetry import metrics
    except ImportError:
        if meter_provider is not None:
            raise ConfigurationError(
                f"meter_provider needs OpenTelemetry: {_INSTALL}, or leave it out"
            ) from None
        return AnswerObserver(None, server)
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
        # Nothing set the global provider yet (OpenTelemetry's own stand-in, or its no-op): an
        # application that installed the API but exports no metrics pays nothing per request.
        if type(meter_provider).__name__ in _UNSET_PROVIDERS:
            return AnswerObserver(None, server)
    if isinstance(meter_provider, metrics.MeterProvider):
        meter = meter_provider.get_meter("phala_async", __version__)
    else:
        raise ConfigurationError(
            f"meter_provider must be an opentelemetry.metrics.MeterProvider, not "
            f"{type(meter_provider).__name__}"
        )
    _observe_stats(meter, {"server.address": server}, read_stats)
    return AnswerObserver(meter, server)


def _observe_stats(
    meter: Any, attributes: dict[str, str], read_stats: Callable[[], ClientStats]
) -> None:
    """Register the instruments that read the stats snapshot when the reader collects."""
    from opentelemetry.metrics import Observation

    # The meter provider outlives the client: it holds the reader weakly, so a client that is
    # gone reports nothing instead of being kept alive.
    reader = weakref.WeakMethod(read_stats)

    def observing(
        value: Callable[[ClientStats], Iterable[tuple[float, dict[str, str]]]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            read = reader()
            if read is None:
                return []
            stats = read()
            return [Observation(number, {**attributes, **extra}) for number, extra in value(stats)]

        return callback

    def counter(name: str, unit: str, description: str, field: str) -> None:
        meter.create_observable_counter(
            name,
            callbacks=[observing(lambda stats: [(getattr(stats, field), {})])],
            unit=unit,
            description=description,
        )

    def gauge(name: str, unit: str, description: str, field: str) -> None:
        def value(stats: ClientStats) -> list[tuple[float, dict[str, str]]]:
            number = getattr(stats, field, None)  # ``window`` only on an engine that has one
            return [] if number is None else [(number, {})]

        meter.create_observable_gauge(
            name, callbacks=[observing(value)], unit=unit, description=description
        )

    counter("phala_async.retries", "{request}", "Requests that retried a failed one", "retries")
    counter("phala_async.rate_limited", "{response}", "Answers with status 429", "rate_limited")
    counter(
        "phala_async.retries_denied",
        "{retry}",
        "Retries not sent because the API answered nothing but failures",
        "retries_denied",
    )
    gauge("phala_async.in_flight", "{request}", "Requests on the wire now", "in_flight")
    gauge(
        "phala_async.send_rate", "{request}/s", "The adaptive send rate, when pacing", "send_rate"
    )
    gauge("phala_async.window", "{request}", "Requests allowed in flight now", "window")

    def calls(stats: ClientStats) -> list[tuple[float, dict[str, str]]]:
        ended: list[tuple[float, dict[str, str]]] = [
            (stats.ok, {"outcome": "ok"}),
            (stats.cancelled, {"outcome": "cancelled"}),
        ]
        ended += [
            (count, {"outcome": "failed", "error.type": name})
            for name, count in stats.failed.items()
        ]
        return ended

    meter.create_observable_counter(
        "phala_async.calls",
        callbacks=[observing(calls)],
        unit="{call}",
        description="Calls ended (one per get_cvm, sweep id or page), by outcome",
    )
