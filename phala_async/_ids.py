"""Turning what a caller passes as a CVM identifier into one safe path segment.

The API accepts an integer id, a CVM name, ``app_<40 hex>``, a VM UUID or an instance id. Like the
official TypeScript and Go SDKs, two forms are normalised before the request: a v4 UUID loses its
dashes and a bare 40-hex string becomes ``app_<hex>``. Whatever the input, the result is checked to
be a single path segment of ``[A-Za-z0-9_-]``, so no identifier can change the request path.
"""

from __future__ import annotations

import re

from ._errors import InvalidCvmIdError

__all__ = ["MAX_ID_LENGTH", "id_key", "normalize_cvm_id"]

MAX_ID_LENGTH = 128

# `re.ASCII` keeps `\d`-style shortcuts out of play and `$` is avoided in favour of fullmatch, so a
# trailing newline can never slip through.
_SEGMENT = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}", re.ASCII)
_UUID_V4 = re.compile(
    r"[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}",
    re.ASCII | re.IGNORECASE,
)
# Ints below this have at most 128 digits; checked before str(), which fails on huge ints.
_INT_LIMIT = 10**MAX_ID_LENGTH
_HEX40 = re.compile(r"[0-9a-f]{40}", re.ASCII | re.IGNORECASE)


def normalize_cvm_id(cvm_id: object) -> str:
    """Return the path segment the API is asked for, given a CVM identifier.

    Args:
        cvm_id: an ``int`` (the database id) or a ``str`` in any form the API accepts.

    Returns:
        The identifier as it goes into ``/cvms/{cvm_id}``: dashes removed from a v4 UUID,
        ``app_`` put before a bare 40-hex app id, everything else unchanged.

    Raises:
        InvalidCvmIdError: the value is not a ``str`` or ``int`` (``bool`` included), is a negative
            integer, or is not 1 to 128 characters of ``A-Z a-z 0-9 _ -`` once normalised.
    """
    if type(cvm_id) is int and 0 <= cvm_id < _INT_LIMIT:
        return str(cvm_id)  # the common case, and always a valid segment
    if isinstance(cvm_id, bool) or not isinstance(cvm_id, (str, int)):
        raise InvalidCvmIdError(cvm_id, f"must be a str or int, not {type(cvm_id).__name__}")
    if isinstance(cvm_id, int):
        if cvm_id < 0:
            raise InvalidCvmIdError(cvm_id, "an integer id cannot be negative")
        if cvm_id >= _INT_LIMIT:
            raise InvalidCvmIdError(cvm_id, f"has more than {MAX_ID_LENGTH} digits")
        text = str(cvm_id)
    else:
        text = cvm_id
    length = len(text)  # the two rewritten forms have fixed lengths: skip their regexes otherwise
    if length in (32, 36) and _UUID_V4.fullmatch(text):
        text = text.replace("-", "")
    elif length == 40 and _HEX40.fullmatch(text):
        text = "app_" + text
    if _SEGMENT.fullmatch(text) is None:
        raise InvalidCvmIdError(cvm_id, _why_invalid(text))
    return text


def _why_invalid(text: str) -> str:
    if not text:
        return "is empty"
    if len(text) > MAX_ID_LENGTH:
        return f"is {len(text)} characters long; at most {MAX_ID_LENGTH} are allowed"
    bad = next(ch for ch in text if not (ch.isascii() and (ch.isalnum() or ch in "_-")))
    return f"contains {bad!r}; only letters, digits, '_' and '-' are allowed"


def id_key(cvm_id: str | int) -> str:
    """What makes two ids the same CVM: the normalised id (``app_<hex>`` and the bare hex are one);
    an invalid id is its own key, never equal to a valid one."""
    try:
        return normalize_cvm_id(cvm_id)
    except InvalidCvmIdError:
        return f"\0{cvm_id}"
