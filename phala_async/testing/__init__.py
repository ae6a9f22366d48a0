"""A local simulator of the Phala Cloud API, for tests and benchmarks.

``PhalaSimulator`` is a real ``aiohttp.web`` server on 127.0.0.1 that serves the two endpoints this
package uses, as the API reference describes them:

- ``GET /api/v1/cvms/{cvm_id}``: the ``CvmBasicInfo`` document of one CVM, looked up by integer id,
  name, ``app_<40 hex>``, bare 40-hex app or instance id, or VM UUID (dashed or not);
- ``GET /api/v1/cvms/paginated?page=&page_size=``: ``HostedCvm`` items over the workspace, in id
  order; each item's ``hosted.id`` and ``hosted.instance_id`` are its CVM's VM UUID and instance id.

Both require ``X-API-Key: <api_key>`` or ``Authorization: Bearer <token>`` (401 otherwise), and
every answer carries a unique ``X-Request-ID``. Errors use the real server's bodies: 403 for CVMs of
another workspace, 404 ``ERR-03-001``, 422 FastAPI validation details, 429 ``ERR-05-002`` with
``Retry-After``. ``X-Phala-Version`` picks the shape, as on the real API: ``2025-10-28`` (or no
header) the documents above, ``2026-01-21`` and the later versions the official SDKs send
(``2026-05-22``,
``2026-06-23``) the ``CVMInfo`` shape (``CVMInfoDetail``; listing items ``CVMInfo``), whose hashid
``id`` (``cvm_...``) the detail endpoint also takes; any other version is answered 400 in the
structured error form. The listing filters by node with ``teepod_id`` (or ``node_id``).

An app may run as several CVMs (``instances_per_app``): they share the ``app_id``, so ``app_<hex>``
names only the app's first instance, while the integer id, name, VM UUID and instance id name one
CVM. The workspace can change while the server runs, as a real one does between two sweeps:
``add_cvms``, ``remove_cvm`` and ``update_cvm`` change the detail documents and the listing together
(``total`` and ``pages`` included); a removed CVM answers 404 ``ERR-03-001`` in every identifier
form.

With ``tls=True`` it serves HTTPS with a certificate of its own throwaway CA (trustme, from the
``testing`` extra); clients trust it through ``ca_file`` or ``ca_pem``, and ``tls_cert`` serves a
certificate for the wrong host or a self-signed one instead.

Failures can be injected on the detail endpoint at random (``fault_rate``, ``faults``), by a request
budget (``rate_limit``), or in a fixed order per path segment (``script``). Connections can go stale
as behind a load balancer (``drop_after``: the request after that many on one keep-alive connection
is dropped unanswered). Counters (``requests``, ``total_requests``, ``status_counts``,
``connections``) and a log of ``RequestRecord``s show what the server saw.

Public names: ``PhalaSimulator``, ``Fault`` (the injectable failures), ``DEFAULT_FAULTS`` (those
``fault_rate`` draws from by default), ``RequestRecord`` (one entry of ``request_log``) and
``SIMULATED_VERSIONS`` (each ``X-Phala-Version`` served, with its shape). Example:

    import ssl

    import aiohttp
    from phala_async.testing import Fault, PhalaSimulator

    async def main() -> None:
        async with PhalaSimulator(cvms=10, tls=True) as sim:
            sim.script(3, Fault.HTTP_503, Fault.OK)
            trust = ssl.create_default_context(cafile=sim.ca_file)
            headers = {"X-API-Key": sim.api_key}
            async with aiohttp.ClientSession(headers=headers) as session:
                for _ in range(2):
                    async with session.get(f"{sim.base_url}/cvms/3", ssl=trust) as response:
                        print(response.status)  # 503, then 200
            assert sim.requests["3"] == 2
"""

from ._faults import DEFAULT_FAULTS, Fault
from ._simulator import PhalaSimulator, RequestRecord
from ._v2026 import SIMULATED_VERSIONS

__all__ = ["DEFAULT_FAULTS", "SIMULATED_VERSIONS", "Fault", "PhalaSimulator", "RequestRecord"]

# Documented and imported from here, as before the simulator became a sub-package (reprs, pickles).
PhalaSimulator.__module__ = RequestRecord.__module__ = __name__
