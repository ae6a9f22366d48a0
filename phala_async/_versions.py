"""The API versions a client can speak: each one's ``X-Phala-Version`` and its decoders.

``2025-10-28`` (the default) answers the shape on the API reference page: :class:`CvmDetail`,
listing entries :class:`HostedCvm`. ``2026-01-21`` answers the ``CVMInfo`` shape,
:class:`CvmInfo` for both. A client holds one :class:`ApiShape` and decodes every answer with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from ._models import CvmDetail, CvmPage, decode_cvm, decode_page
from ._models_v2026 import AnyCvm, CvmInfo, decode_cvm_info, decode_info_page
from ._response import Decode

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "AnyCvm",
    "ApiShape",
    "ApiVersion",
    "shape_for",
]

#: The version a client pins unless told otherwise: the shape on the API reference page.
API_VERSION = "2025-10-28"
#: The ``X-Phala-Version`` values this package decodes, oldest first.
API_VERSIONS = ("2025-10-28", "2026-01-21")
ApiVersion: TypeAlias = Literal["2025-10-28", "2026-01-21"]

_D = TypeVar("_D", CvmDetail, CvmInfo)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiShape(Generic[_D]):
    """What one API version means for a client: the header value and how to read the answers."""

    version: str
    decode_cvm: Decode[_D]
    decode_page: Decode[CvmPage]


_SHAPES: dict[str, ApiShape[Any]] = {
    "2025-10-28": ApiShape("2025-10-28", decode_cvm, decode_page),
    "2026-01-21": ApiShape("2026-01-21", decode_cvm_info, decode_info_page),
}


def shape_for(version: str) -> ApiShape[Any]:
    """The :class:`ApiShape` of a version already checked by ``check_api_version``."""
    return _SHAPES[version]
