"""The command line's network options: ``--ca-file``, ``--proxy`` and ``--no-env-proxy``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import SECRET_KEY, jsonl, run, simulator_thread

from phala_async.cli import main


def test_ca_file_lets_a_sweep_trust_a_private_ca(tmp_path: Path) -> None:
    """With ``--ca-file`` naming the simulator's CA, an HTTPS sweep fetches every id."""
    output = tmp_path / "out.jsonl"
    with simulator_thread(cvms=5, tls=True, api_key=SECRET_KEY) as sim:
        status = run(sim, "--ca-file", sim.ca_file, "sweep", "1", "2", "3", "-o", str(output))
    assert status == 0
    assert sorted(record["cvm"]["id"] for record in jsonl(output.read_text())) == [1, 2, 3]


def test_an_untrusted_certificate_stops_the_sweep_and_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--ca-file``, the sweep stops after one request with exit 4 (stopped before every
    id was attempted), and the message says what the certificate failure was and to pass
    ``--ca-file``."""
    output = tmp_path / "out.jsonl"
    with simulator_thread(cvms=5, tls=True, api_key=SECRET_KEY) as sim:
        status = run(sim, "sweep", "1", "2", "3", "-o", str(output))
        connections = sim.connections
    err = capsys.readouterr().err
    assert status == 4
    assert "certificate of 127.0.0.1" in err
    assert "not trusted: unable to get local issuer certificate" in err
    assert "--ca-file" in err
    assert "ca_file=" not in err
    assert connections == 1
    assert not output.exists()  # nothing replaced it


def test_a_proxy_that_is_not_http_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--proxy`` with a scheme the client cannot use exits 2 with a message naming it."""
    status = main(["--api-key", SECRET_KEY, "--proxy", "socks5://127.0.0.1:1080", "get", "1"])
    err = capsys.readouterr().err
    assert status == 2
    assert "socks5" in err


def test_no_env_proxy_ignores_the_proxy_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--no-env-proxy``, an ``HTTP_PROXY`` pointing nowhere is not used."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    output = tmp_path / "out.jsonl"
    with simulator_thread(cvms=3, api_key=SECRET_KEY) as sim:
        status = run(sim, "--no-env-proxy", "sweep", "1", "-o", str(output))
    assert status == 0
    assert [record["ok"] for record in jsonl(output.read_text())] == [True]


def test_an_untrusted_certificate_ends_a_watch(capsys: pytest.CaptureFixture[str]) -> None:
    """A watch over HTTPS it cannot trust ends with status 1 after one connection, instead of
    writing an error event every round."""
    with simulator_thread(cvms=3, tls=True, api_key=SECRET_KEY) as sim:
        status = run(sim, "watch", "1", "2", "--rounds", "3", "--interval", "0.01")
        connections = sim.connections
    err = capsys.readouterr().err
    assert status == 1
    assert "--ca-file" in err
    assert connections == 1
