"""sign/verify on both implementations, against the standard library's HMAC."""

from __future__ import annotations

import hashlib
import hmac
from types import ModuleType

import pytest

BODY = b'{"event":{"type":"get-evals","data":{}}}'


def oracle(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("body", [b"", BODY, bytes(range(256)) * 300, "héllo 😀".encode()])
def test_sign_matches_the_standard_library(body: bytes, core: ModuleType) -> None:
    assert core.sign("s3cret", body) == oracle("s3cret", body)


def test_empty_secret_means_the_key_default(core: ModuleType) -> None:
    assert core.sign("", BODY) == oracle("DEFAULT", BODY)
    assert core.verify([""], oracle("DEFAULT", BODY), BODY)


GOOD = oracle("s3cret", BODY)


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (GOOD, BODY, True),
        ("sha256=" + GOOD[7:].upper(), BODY, True),  # AgentMark's parser accepts upper-case hex
        (oracle("wrong", BODY), BODY, False),
        (GOOD, BODY[:-1] + b"]", False),  # one byte changed
        (GOOD[:-1], BODY, False),  # truncated
        (GOOD + "0", BODY, False),
        (GOOD[7:], BODY, False),  # no sha256= prefix
        ("SHA256=" + GOOD[7:], BODY, False),
        ("sha1=" + GOOD[7:], BODY, False),
        ("sha256=" + "g" * 64, BODY, False),
        ("garbage", BODY, False),
        ("", BODY, False),
        (None, BODY, False),
        ("sha256=" + "é" * 64, BODY, False),
    ],
)
def test_verify(header: str | None, body: bytes, expected: bool, core: ModuleType) -> None:
    assert core.verify(["s3cret"], header, body) is expected


def test_any_of_several_secrets_is_accepted(core: ModuleType) -> None:
    assert core.verify(["old", "s3cret"], GOOD, BODY)
    assert core.verify("s3cret", GOOD, BODY)
    assert not core.verify([], GOOD, BODY)
    assert not core.verify(["a", "b"], GOOD, BODY)


def test_large_bodies(core: ModuleType) -> None:
    body = b"x" * (2 * 1024 * 1024)
    assert core.verify(["s3cret"], oracle("s3cret", body), body)
    assert not core.verify(["s3cret"], oracle("s3cret", body), body[:-1])


def test_secrets_of_the_wrong_type_are_a_type_error(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.verify([1, 2], GOOD, BODY)
