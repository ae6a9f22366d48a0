"""Tests for OpenTelemetry metrics (the SDK's in-memory reader) and the per-answer DEBUG log."""

from __future__ import annotations

import asyncio
import builtins
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from phala_async import APIConnectionError, ConfigurationError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator

ClientFactory = Callable[..., PhalaClient]


@pytest.fixture
def metered() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    """An in-memory metric reader and the meter provider of its own it reads."""
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    yield metric_reader, provider
    provider.shutdown()


def collected(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader holds now, by metric name."""
    points: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "phala_async"
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


async def test_a_100_id_sweep_is_seen_by_the_request_counter_and_histogram(
    client_for: ClientFactory,
) -> None:
    """After a 100-id sweep the reader sees 100 2xx requests, 100 durations and 100 ok calls,
    and no attribute holds the credential, an id or a path."""
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    try:
        async with PhalaSimulator(cvms=100) as sim:
            client = client_for(sim, meter_provider=provider)
            results = await asyncio.wait_for(client.get_cvms(range(1, 101)), 30)
            points = collected(metric_reader)
            api_key, requests = sim.api_key, sim.total_requests
    finally:
        provider.shutdown()
    assert all(result.ok for result in results)
    assert requests == 100
    [counted] = points["phala_async.requests"]
    assert (counted.value, counted.attributes["http.status_class"]) == (100, "2xx")
    [durations] = points["http.client.request.duration"]
    assert durations.count == 100
    assert durations.attributes["http.response.status_code"] == 200
    assert {point.value for point in points["phala_async.in_flight"]} == {0}
    calls = {point.attributes["outcome"]: point.value for point in points["phala_async.calls"]}
    assert calls == {"ok": 100, "cancelled": 0}
    values = [
        str(value)
        for name, found in points.items()
        for point in found
        for value in point.attributes.values()
    ]
    assert values
    assert not any(api_key in value or "/cvms" in value for value in values)


async def test_retries_429s_and_failures_are_counted(
    client_for: ClientFactory, metered: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    """A 429 then a 503 then an answer, and a 404: the instruments count each of them."""
    reader, provider = metered
    async with PhalaSimulator(cvms=5) as sim:
        client = client_for(sim, meter_provider=provider)
        sim.script(1, Fault.RATE_LIMIT, Fault.HTTP_503, Fault.OK)
        results = await asyncio.wait_for(client.get_cvms([1, 999]), 30)
        points = collected(reader)
    assert [result.ok for result in results] == [True, False]
    by_class = {p.attributes["http.status_class"]: p.value for p in points["phala_async.requests"]}
    assert by_class == {"2xx": 1, "4xx": 2, "5xx": 1}
    assert [point.value for point in points["phala_async.retries"]] == [2]
    assert [point.value for point in points["phala_async.rate_limited"]] == [1]
    failed = [p for p in points["phala_async.calls"] if p.attributes["outcome"] == "failed"]
    assert [(p.attributes["error.type"], p.value) for p in failed] == [("NotFoundError", 1)]


async def test_a_request_without_an_answer_is_recorded_as_none(
    client_for: ClientFactory, metered: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    """A refused connection counts in the ``none`` class, its duration with the error type."""
    reader, provider = metered
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}/api/v1", meter_provider=provider, max_attempts=1)
    with pytest.raises(APIConnectionError):
        await client.get_cvm(1)
    points = collected(reader)
    [counted] = points["phala_async.requests"]
    assert (counted.value, counted.attributes["http.status_class"]) == (1, "none")
    [durations] = points["http.client.request.duration"]
    assert durations.attributes["error.type"] == "APIConnectionError"


def test_the_window_gauge_reports_the_adaptive_window(
    metered: tuple[InMemoryMetricReader, MeterProvider],
) -> None:
    """``phala_async.window`` reports the requests the client lets be in flight now: a new
    client starts with a small window (slow start) under its ``concurrency``."""
    reader, provider = metered
    client = PhalaClient(api_key="phak_test", meter_provider=provider, concurrency=16)
    points = collected(reader)
    assert [point.value for point in points["phala_async.window"]] == [client.stats.window]
    assert 1 <= client.stats.window < 16
    assert [point.value for point in points["phala_async.in_flight"]] == [0]


def test_a_meter_provider_of_another_kind_is_refused() -> None:
    """A ``meter_provider`` that is not one raises ConfigurationError naming the type."""
    with pytest.raises(ConfigurationError, match="not str"):
        PhalaClient(api_key="phak_test", meter_provider="prometheus")


def test_without_opentelemetry_nothing_is_recorded_and_a_provider_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where ``opentelemetry`` cannot be imported, a client has no instruments, and asking for
    a meter provider says which extra to install."""
    real_import = builtins.__import__

    def without_opentelemetry(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_opentelemetry)
    client = PhalaClient(api_key="phak_test")
    with pytest.raises(ConfigurationError, match=r"phala-async\[otel\]"):
        PhalaClient(api_key="phak_test", meter_provider=object())
    assert client._pipeline.answers.recording is False


async def test_each_answer_is_logged_at_debug_with_its_status_and_duration(
    client: PhalaClient, simulator: PhalaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG each answer is one line with the path, the status and the seconds it took,
    and never the credential."""
    caplog.set_level(logging.DEBUG, logger="phala_async")
    await client.get_cvm(1)
    with pytest.raises(Exception, match="404"):
        await client.get_cvm(999)
    answers = [r.getMessage() for r in caplog.records if ": HTTP " in r.getMessage()]
    assert len(answers) == 2
    assert answers[0].startswith("GET /cvms/1: HTTP 200 in ")
    assert answers[1].startswith("GET /cvms/999: HTTP 404 in ")
    assert not any(simulator.api_key in record.getMessage() for record in caplog.records)
