"""A proxy.py plugin that records what the proxy saw and refuses on demand.

Loaded by proxy.py in its own process (``--plugins _proxy_plugin.Recorder``), never imported by
the tests. It talks to them through files in ``$PHALA_TEST_PROXY_DIR``:

- ``seen.jsonl``: one line per request the proxy received (method, host, port, headers);
- ``refuse``: when present, its status (``403``) is answered to every request instead;
- ``credentials``: when present, ``user:password`` the proxy requires (407 otherwise).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from proxy.http.exception import HttpRequestRejected
from proxy.http.proxy import HttpProxyBasePlugin

_DIRECTORY = Path(os.environ.get("PHALA_TEST_PROXY_DIR", "."))


def _text(value: Any) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Recorder(HttpProxyBasePlugin):  # type: ignore[misc]  # proxy.py has no type hints
    """Records each request, then refuses it or lets it through."""

    def before_upstream_connection(self, request: Any) -> Any:
        headers = {_text(name): _text(value[1]) for name, value in (request.headers or {}).items()}
        seen = {
            "method": _text(request.method),
            "host": _text(request.host),
            "port": request.port,
            "headers": headers,
        }
        with (_DIRECTORY / "seen.jsonl").open("a") as log:
            log.write(json.dumps(seen) + "\n")
        refuse = _DIRECTORY / "refuse"
        if refuse.exists():
            raise HttpRequestRejected(status_code=int(refuse.read_text()), reason=b"Refused")
        wanted = _DIRECTORY / "credentials"
        if wanted.exists():
            expected = "Basic " + base64.b64encode(wanted.read_bytes()).decode()
            if headers.get("proxy-authorization") != expected:
                raise HttpRequestRejected(
                    status_code=407,
                    reason=b"Proxy Authentication Required",
                    headers={b"Proxy-Authenticate": b'Basic realm="test"'},
                )
        return request
