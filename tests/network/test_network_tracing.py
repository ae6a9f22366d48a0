"""``trace_configs``: OpenTelemetry's aiohttp instrumentation on the client's own session sees
one client span per attempt, retries included, and no credential."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from _proxy import clean_network_environment  # noqa: F401 - used by pytestmark
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from phala_async import ConfigurationError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator

pytestmark = pytest.mark.usefixtures("clean_network_environment")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory span exporter, emptied after the test."""
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


def tracing(exporter: InMemorySpanExporter) -> aiohttp.TraceConfig:
    """OpenTelemetry's aiohttp trace config, exporting to ``exporter`` (the README's set-up)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return create_trace_config(tracer_provider=provider)


def client_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The finished client spans."""
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]


async def test_each_attempt_is_one_client_span(exporter: InMemorySpanExporter) -> None:
    """An id answered after two 503s and an id answered at once make four client spans, with
    the statuses the server gave."""
    async with PhalaSimulator(cvms=2) as sim:
        sim.script(1, Fault.HTTP_503, Fault.HTTP_503, Fault.OK)
        client = PhalaClient(
            api_key=sim.api_key,
            base_url=sim.base_url,
            backoff_initial=0.001,
            backoff_max=0.002,
            trace_configs=[tracing(exporter)],
        )
        async with asyncio.timeout(10), client:
            assert (await client.get_cvm(1)).id == 1
            assert (await client.get_cvm(2)).id == 2
            stats = client.stats
    spans = client_spans(exporter)
    statuses = [_status(span) for span in spans]
    assert len(spans) == 4 == stats.requests
    assert statuses == [503, 503, 200, 200]


def _status(span: ReadableSpan) -> object:
    attributes = span.attributes or {}
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


async def test_no_span_attribute_carries_the_credential(exporter: InMemorySpanExporter) -> None:
    """Neither the API key nor any part of it is in a span's name, attributes or events."""
    async with PhalaSimulator(cvms=3) as sim:
        client = PhalaClient(
            api_key=sim.api_key, base_url=sim.base_url, trace_configs=[tracing(exporter)]
        )
        async with asyncio.timeout(10), client:
            await client.get_cvms(range(1, 4))
    spans = client_spans(exporter)
    recorded = [
        f"{span.name} {dict(span.attributes or {})} {[event.attributes for event in span.events]}"
        for span in spans
    ]
    assert len(spans) == 3
    assert [text for text in recorded if sim.api_key in text] == []


def test_trace_configs_must_be_trace_config_objects() -> None:
    """Anything but a list of ``aiohttp.TraceConfig`` is refused at construction."""
    with pytest.raises(ConfigurationError, match=r"aiohttp\.TraceConfig"):
        PhalaClient(api_key="phak_x", trace_configs=[object()])  # type: ignore[list-item]
