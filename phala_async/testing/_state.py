"""The CVMs a ``phala_async.testing.PhalaSimulator`` serves, and how a path segment finds one.

Pure state, no I/O: the server (``_simulator``) asks ``lookup`` and ``page`` for answers, and the
simulator's ``add_cvms``, ``remove_cvm`` and ``update_cvm`` change it between requests.

Ids follow one auto-increment sequence, as the API's database gives them: the workspace's CVMs are
``1..cvms``, the CVMs of another workspace (answered 403) ``cvms+1..cvms+forbidden``, and CVMs added
later take the ids after the highest ever given, so no id is reused, not even after a removal.

Apps: CVMs are created in batches (the workspace, the other workspace, each ``add``); within a batch
every ``instances_per_app`` consecutive CVMs are the instances of one app and share its ``app_id``
(the last app of a batch may have fewer). ``app_<hex>`` and the bare hex name the app's first
instance still present, the lowest id. The API reference does not say which instance an app id
names; a lookup by app id that takes the first match, the oldest row, is the most plausible.
Every other form (integer id, name, VM UUID, instance id) names one CVM alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from . import _data as data
from ._v2026 import BASIC, info_document

__all__ = ["Workspace"]


class Workspace:
    """The CVMs of the simulated workspace and of another workspace, with their encoded bodies.

    Args:
        seed: Seed of the CVM data.
        cvms: Number of CVMs in the workspace.
        forbidden: Number of CVMs in another workspace.
        instances_per_app: CVMs that share one app.
    """

    def __init__(self, *, seed: int, cvms: int, forbidden: int, instances_per_app: int) -> None:
        self._seed, self._instances_per_app = seed, instances_per_app
        self._next_id = 1
        # Every CVM that exists, in id order (ids only grow, so insertion order is id order).
        self._identities: dict[int, data.CvmIdentity] = {}
        self._index: dict[str, int] = {}  # exact path segment -> id, for every identifier form
        # Encoded once, so serving is a lookup (about 50 µs per CVM here, 0.5 s for 10 000).
        self._details: dict[int, bytes] = {}  # workspace CVMs only: the rest answer 403
        self._items: dict[int, bytes] = {}
        # The 2026-01-21 shape (detail, listing entry), encoded when first asked for, dropped
        # when the CVM changes.
        self._infos: dict[int, tuple[bytes, bytes]] = {}
        self._nodes: dict[int, object] = {}  # workspace id -> its node's id, for the filter
        self._order: list[int] = []  # workspace ids, ascending: the listing
        self._create(cvms, in_workspace=True)
        self._forbidden = tuple(self._create(forbidden, in_workspace=False))

    @property
    def cvm_ids(self) -> list[int]:
        """Ids of the workspace CVMs, in order (a copy)."""
        return list(self._order)

    @property
    def forbidden_ids(self) -> list[int]:
        """Ids of the CVMs of another workspace."""
        return list(self._forbidden)

    def document(self, cvm_id: int) -> dict[str, Any]:
        """A fresh copy of the detail document of workspace CVM ``cvm_id``.

        Raises:
            KeyError: ``cvm_id`` is not a workspace CVM.
        """
        body = self._details.get(cvm_id)
        if body is None:
            raise KeyError(f"CVM {cvm_id!r} is not in the workspace: pick one of cvm_ids")
        document: dict[str, Any] = json.loads(body)
        return document

    # -- answers -----------------------------------------------------------------------------

    def lookup(self, segment: str, shape: str = BASIC) -> tuple[int, bytes]:
        """The status and body of ``GET /cvms/{segment}`` in ``shape`` (``BASIC`` or ``INFO``)."""
        cvm_id = self._index.get(segment)  # the exact forms, one dict hit on the fast path
        if cvm_id is None:
            key = data.canonical_key(segment)
            if key is None:
                return 422, data.INVALID_ID
            cvm_id = self._index.get(key)
            if cvm_id is None:
                return 404, data.not_found(segment)
        body = self._details.get(cvm_id)
        if body is None:  # indexed but not served: a CVM of another workspace
            return 403, data.FORBIDDEN
        return 200, body if shape == BASIC else self._info(cvm_id)[0]

    def page(self, request: data.PageRequest, shape: str = BASIC) -> bytes:
        """The body of ``GET /cvms/paginated`` for a validated query, in ``shape``."""
        order = self._order
        if request.node_id is not None:
            order = [cvm_id for cvm_id in order if self._nodes.get(cvm_id) == request.node_id]
        page, page_size = request.page, request.page_size
        start = (page - 1) * page_size
        chosen = order[start : start + page_size]
        if shape == BASIC:
            items = [self._items[cvm_id] for cvm_id in chosen]
        else:
            items = [self._info(cvm_id)[1] for cvm_id in chosen]
        return data.page_body(items, len(order), page, page_size)

    def _info(self, cvm_id: int) -> tuple[bytes, bytes]:
        """The encoded ``2026-01-21`` detail and listing entry of a workspace CVM."""
        info = self._infos.get(cvm_id)
        if info is None:
            detail = json.loads(self._details[cvm_id])
            hashid = self._identities[cvm_id].hashid
            info = (
                data.encode(info_document(detail, hashid, listing=False)),
                data.encode(info_document(detail, hashid, listing=True)),
            )
            self._infos[cvm_id] = info
        return info

    def _note_node(self, cvm_id: int, detail: Mapping[str, Any]) -> None:
        node = detail.get("teepod")
        self._nodes[cvm_id] = node.get("id") if isinstance(node, dict) else None

    # -- changes -----------------------------------------------------------------------------

    def add(self, count: int) -> list[int]:
        """Create ``count`` workspace CVMs after the highest id ever given; return their ids."""
        return self._create(count, in_workspace=True)

    def remove(self, cvm_id: int) -> None:
        """Delete workspace CVM ``cvm_id``: no form of it is found any more.

        Its app's keys move to the app's next instance, if one is left.

        Raises:
            KeyError: ``cvm_id`` is not a workspace CVM.
        """
        self.document(cvm_id)  # raises KeyError for any other id
        identity = self._identities.pop(cvm_id)
        del self._details[cvm_id], self._items[cvm_id]
        self._infos.pop(cvm_id, None)
        self._nodes.pop(cvm_id, None)
        self._order.remove(cvm_id)
        held_the_app = self._index.get(identity.app_id) == cvm_id
        for key in identity.lookup_keys():
            if self._index.get(key) == cvm_id:
                del self._index[key]
        if held_the_app:  # the app's first instance: its next one, if any, takes the app's keys
            later = range(cvm_id + 1, cvm_id + self._instances_per_app)  # the same batch's ids
            heir = next((i for i in later if self._app_of(i) == identity.app_id), None)
            if heir is not None:
                self._index.update(dict.fromkeys(identity.app_keys(), heir))

    def _app_of(self, cvm_id: int) -> str | None:
        identity = self._identities.get(cvm_id)
        return None if identity is None else identity.app_id

    def update(self, cvm_id: int, fields: Mapping[str, Any]) -> None:
        """Change fields of workspace CVM ``cvm_id``, in its detail document and its list item.

        Raises:
            KeyError: ``cvm_id`` is not a workspace CVM.
            ValueError: A field is unknown or an identifier, or ``name`` is not a free CVM name.
            TypeError: A value cannot be encoded as JSON; nothing was changed.
        """
        detail = self.document(cvm_id)
        unknown = sorted(fields.keys() - detail.keys())
        if unknown:
            raise ValueError(
                f"unknown CVM field(s) {', '.join(unknown)}: pass fields of the detail document, "
                "such as status, name, vcpu, memory, disk_size or teepod"
            )
        fixed = sorted(fields.keys() & data.IDENTIFIER_FIELDS)
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot change: a CVM keeps its identifiers "
                "(remove_cvm and add_cvms make CVMs with new ones)"
            )
        identity = self._identities[cvm_id]
        name = fields.get("name", identity.name)
        if name != identity.name:
            self._check_name(name)
        item = json.loads(self._items[cvm_id])
        data.update_documents(detail, item, fields)
        # Encoded before anything changes: a value JSON cannot hold raises TypeError here.
        self._details[cvm_id], self._items[cvm_id] = data.encode(detail), data.encode(item)
        self._infos.pop(cvm_id, None)
        self._note_node(cvm_id, detail)
        if name != identity.name:
            del self._index[identity.name]
            self._index[name] = cvm_id
            self._identities[cvm_id] = dataclasses.replace(identity, name=name)

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str) or not data.is_cvm_name(name):
            raise ValueError(
                f"name {name!r} is not a CVM name: pass 5-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit, not all digits nor 32 or 40 hex digits"
            )
        if name in self._index:
            raise ValueError(f"name {name!r} is taken by CVM {self._index[name]}: pass another")

    def _create(self, count: int, *, in_workspace: bool) -> list[int]:
        ids = list(range(self._next_id, self._next_id + count))
        self._next_id += count
        for position, cvm_id in enumerate(ids):
            first_instance = ids[position - position % self._instances_per_app]
            identity = data.cvm_identity(self._seed, cvm_id, first_instance)
            self._identities[cvm_id] = identity
            for key in identity.lookup_keys():
                self._index.setdefault(key, cvm_id)  # an app's keys stay with its first instance
            if in_workspace:
                detail, item = data.cvm_documents(self._seed, identity)
                self._details[cvm_id], self._items[cvm_id] = data.encode(detail), data.encode(item)
                self._note_node(cvm_id, detail)
        if in_workspace:
            self._order.extend(ids)
        return ids
