"""Tests for turning a caller's CVM identifier into one safe path segment (``_ids``)."""

from __future__ import annotations

import pytest

from phala_async import InvalidCvmIdError, normalize_cvm_id

HEX40 = "8d1f0c9e2b7a4f6d1e3c5b7a9f0e2d4c6b8a0f1e"
UUID_V4 = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(UUID_V4, UUID_V4.replace("-", ""), id="v4-uuid-dashed"),
        pytest.param(UUID_V4.upper(), UUID_V4.upper().replace("-", ""), id="v4-uuid-uppercase"),
        pytest.param(UUID_V4.replace("-", ""), UUID_V4.replace("-", ""), id="v4-uuid-undashed"),
        pytest.param(HEX40, f"app_{HEX40}", id="bare-40-hex"),
        pytest.param(f"app_{HEX40}", f"app_{HEX40}", id="app-prefixed-hex"),
        pytest.param(1234, "1234", id="int"),
        pytest.param(0, "0", id="int-zero"),
        pytest.param("1234", "1234", id="digit-string"),
        pytest.param("web-00001", "web-00001", id="name"),
        pytest.param("My_Cvm-2", "My_Cvm-2", id="name-with-underscore"),
    ],
)
def test_normalize_valid_ids(given: str | int, expected: str) -> None:
    """A valid identifier becomes the path segment the official SDKs would send."""
    assert normalize_cvm_id(given) == expected


def test_exactly_128_characters_is_accepted() -> None:
    """An identifier of exactly the maximum length, 128 characters, is accepted unchanged."""
    assert normalize_cvm_id("a" * 128) == "a" * 128


INVALID = [
    pytest.param("", "empty", id="empty"),
    pytest.param("a" * 129, "128", id="129-chars"),
    pytest.param("../x", "'.'", id="dot-dot-slash"),
    pytest.param("a/b", "'/'", id="slash"),
    pytest.param("a?b=1", "'?'", id="question-mark"),
    pytest.param("a#frag", "'#'", id="hash"),
    pytest.param("a%2Fb", "'%'", id="percent-encoded-slash"),
    pytest.param("a b", "' '", id="space"),
    pytest.param("a\tb", r"'\t'", id="tab"),
    pytest.param("abc\n", r"'\n'", id="newline-at-end"),
    pytest.param("a\x00b", r"'\x00'", id="nul"),
    pytest.param("a\x1bb", r"'\x1b'", id="escape"),
    pytest.param("a\x7fb", r"'\x7f'", id="del"),
    pytest.param("caf\u00e9", "'\u00e9'", id="non-ascii-e-acute"),
    pytest.param("\uff11\uff12\uff13", "'\uff11'", id="fullwidth-digits"),
    pytest.param(-1, "negative", id="negative-int"),
    pytest.param(True, "bool", id="bool"),
    pytest.param(1.0, "float", id="float"),
    pytest.param(None, "NoneType", id="none"),
    pytest.param(b"123", "bytes", id="bytes"),
]


@pytest.mark.parametrize(("given", "why"), INVALID)
def test_invalid_id_raises_invalid_cvm_id_error(given: object, why: str) -> None:
    """An identifier that could change the path or is no id raises InvalidCvmIdError."""
    with pytest.raises(InvalidCvmIdError) as caught:
        normalize_cvm_id(given)
    assert caught.value.value == given
    assert type(caught.value.value) is type(given)


@pytest.mark.parametrize(("given", "why"), INVALID)
def test_invalid_id_error_is_a_value_error(given: object, why: str) -> None:
    """InvalidCvmIdError is also a ValueError, so generic validation handlers catch it."""
    with pytest.raises(ValueError, match="invalid CVM id"):
        normalize_cvm_id(given)


@pytest.mark.parametrize(("given", "why"), INVALID)
def test_invalid_id_error_names_the_id_and_says_why(given: object, why: str) -> None:
    """The error message quotes the identifier and names what is wrong with it."""
    with pytest.raises(InvalidCvmIdError) as caught:
        normalize_cvm_id(given)
    message = str(caught.value)
    assert repr(given) in message
    assert why in caught.value.reason
    assert caught.value.reason in message
    assert caught.value.attempts == 0


def test_huge_int_raises_invalid_cvm_id_error() -> None:
    """An int too long to turn into a string raises InvalidCvmIdError, not a bare ValueError."""
    with pytest.raises(InvalidCvmIdError) as caught:
        normalize_cvm_id(10**5000)
    assert caught.value.attempts == 0
