"""EncryptedCodec: AES-256-GCM snapshots with key ids, machine-id binding and clear errors."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from deploysm import StateMachineError
from deploysm.core._errors import ErrorCode
from deploysm.stores._base import Codec
from deploysm.stores._crypto import EncryptedCodec

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
MARKER = "zz-SECRET-MARKER-7f3a-zz"
DATA: dict[str, Any] = {
    "machine_id": "m-1",
    "current_state": "deploying",
    "context": {"token": MARKER, "n": 3, "list": [1, 2.5, None, True]},
    "version": 7,
}
CODEC = EncryptedCodec({"k1": K1}, "k1")
BLOB = CODEC.encode("m-1", DATA)
HEADER_LEN = 4 + 1 + 2 + 12  # magic, id length, b"k1", nonce

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def invalid(codec: EncryptedCodec, machine_id: str, blob: Any) -> StateMachineError:
    with pytest.raises(StateMachineError) as info:
        codec.decode(machine_id, blob)
    assert info.value.code == ErrorCode.INVALID_SNAPSHOT
    assert type(info.value) is StateMachineError
    return info.value


def no_secret(message: str, *keys: bytes) -> None:
    for key in keys:
        for form in (repr(key), key.hex(), EncryptedCodec.key_to_text(key), str(list(key))):
            assert form not in message
        assert EncryptedCodec.key_to_text(key).rstrip("=") not in message


# -- round trip and confidentiality ----------------------------------------


def test_round_trip_and_codec_protocol() -> None:
    assert isinstance(CODEC, Codec)
    assert CODEC.decode("m-1", BLOB) == DATA
    assert CODEC.decode("m-1", cast(bytes, bytearray(BLOB))) == DATA
    assert CODEC.decode("m-1", cast(bytes, memoryview(BLOB))) == DATA
    assert BLOB[:7] == b"DSM1\x02k1"
    assert len(BLOB) == HEADER_LEN + len(json.dumps(DATA, separators=(",", ":"))) + 16


@settings(max_examples=60, deadline=None)
@given(data=json_objects, machine_id=st.text(min_size=1, max_size=20))
def test_round_trip_any_json_object(data: dict[str, Any], machine_id: str) -> None:
    assert CODEC.decode(machine_id, CODEC.encode(machine_id, data)) == data


def test_ciphertext_contains_no_plaintext() -> None:
    assert MARKER.encode() not in BLOB
    plaintext = json.dumps(DATA, separators=(",", ":")).encode()
    windows = {plaintext[i : i + 6] for i in range(len(plaintext) - 5)}
    assert not any(w in BLOB[HEADER_LEN:] for w in windows)


def test_random_nonce_makes_each_encoding_different() -> None:
    blobs = {CODEC.encode("m-1", DATA) for _ in range(20)}
    assert len(blobs) == 20
    assert len({b[HEADER_LEN - 12 : HEADER_LEN] for b in blobs}) == 20


def test_repr_and_attributes_do_not_leak_keys() -> None:
    codec = EncryptedCodec({"k1": K1, "k2": K2}, "k2")
    assert repr(codec) == "EncryptedCodec(key_ids=['k1', 'k2'], active_key_id='k2')"
    assert codec.active_key_id == "k2" and codec.key_ids == {"k1", "k2"}
    no_secret(repr(codec), K1, K2)


# -- rotation and key problems ---------------------------------------------


def test_rotation_old_rows_still_decode() -> None:
    old = EncryptedCodec({"k1": K1}, "k1").encode("m-1", DATA)
    rotated = EncryptedCodec({"k1": K1, "k2": K2}, "k2")
    new = rotated.encode("m-1", DATA)
    assert old[5:7] == b"k1" and new[5:7] == b"k2"
    assert rotated.decode("m-1", old) == DATA
    assert rotated.decode("m-1", new) == DATA
    assert EncryptedCodec({"k2": K2}, "k2").decode("m-1", new) == DATA


def test_missing_key_names_the_key_id() -> None:
    err = invalid(EncryptedCodec({"k2": K2}, "k2"), "m-1", BLOB)
    assert "'k1'" in err.message and "not configured" in err.message
    assert "'m-1'" in err.message


def test_wrong_key_under_same_id() -> None:
    err = invalid(EncryptedCodec({"k1": K2}, "k1"), "m-1", BLOB)
    assert "failed authentication" in err.message and "'k1'" in err.message
    no_secret(err.message, K1, K2)


def test_row_copied_to_other_machine_id() -> None:
    err = invalid(CODEC, "m-2", BLOB)
    assert "'m-2'" in err.message and "another machine id" in err.message


def test_header_key_id_edited_to_another_known_key() -> None:
    both = EncryptedCodec({"k1": K1, "k2": K1}, "k1")  # same key bytes: only the AAD differs
    edited = BLOB[:6] + b"2" + BLOB[7:]
    assert both.decode("m-1", BLOB) == DATA
    assert "failed authentication" in invalid(both, "m-1", edited).message


# -- tampering, truncation, garbage ----------------------------------------


def test_every_single_bit_flip_is_rejected() -> None:
    both = EncryptedCodec({"k1": K1, "k3": K1}, "k1")  # 'k1' ^ 0x02 == 'k3' is also known
    for i in range(len(BLOB) * 8):
        flipped = bytearray(BLOB)
        flipped[i // 8] ^= 1 << (i % 8)
        invalid(both, "m-1", bytes(flipped))


@settings(max_examples=100, deadline=None)
@given(data=json_objects, bit=st.integers(min_value=0))
def test_bit_flip_anywhere_is_rejected(data: dict[str, Any], bit: int) -> None:
    blob = bytearray(CODEC.encode("m-1", data))
    bit %= len(blob) * 8
    blob[bit // 8] ^= 1 << (bit % 8)
    invalid(CODEC, "m-1", bytes(blob))


def test_every_truncation_is_rejected() -> None:
    for n in range(len(BLOB)):
        invalid(CODEC, "m-1", BLOB[:n])
        if n:
            invalid(CODEC, "m-1", BLOB[n:])


@settings(max_examples=100, deadline=None)
@given(
    junk=st.binary(max_size=200), prefix=st.sampled_from([b"", b"DSM1", b"DSM1\x02k1", BLOB[:40]])
)
def test_random_bytes_are_rejected(junk: bytes, prefix: bytes) -> None:
    invalid(CODEC, "m-1", prefix + junk)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"DSM",
        b'{"a":1}',
        b"DSM1",
        b"DSM1\x00" + bytes(40),
        b"DSM1\x41" + bytes(100),
        b"DSM1\x02\xff\xfe" + bytes(40),
        b"DSM1\x02k," + bytes(40),
        "DSM1 text",
        None,
        12,
    ],
)
def test_malformed_envelopes(blob: Any) -> None:
    invalid(CODEC, "m-1", blob)


def _seal(plaintext: bytes, machine_id: str = "m-1") -> bytes:
    header = b"DSM1\x02k1" + bytes(12)
    return header + AESGCM(K1).encrypt(bytes(12), plaintext, header + machine_id.encode())


@pytest.mark.parametrize("plaintext", [b"[1,2]", b'"s"', b"null", b"not json", b"\xff\xfe", b""])
def test_authentic_plaintext_that_is_not_a_json_object(plaintext: bytes) -> None:
    assert CODEC.decode("m-1", _seal(b'{"ok":1}')) == {"ok": 1}  # the sealing helper is right
    invalid(CODEC, "m-1", _seal(plaintext))


# -- construction ----------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "active", "needle"),
    [
        ({}, "k1", "non-empty"),
        ([("k1", K1)], "k1", "non-empty mapping"),
        ({"k1": K1[:16]}, "k1", "'k1' must be 32 bytes (AES-256), got 16"),
        ({"k1": K1[:24]}, "k1", "got 24"),
        ({"k1": K1 + b"x"}, "k1", "got 33"),
        ({"k1": K1.hex()}, "k1", "key_from_text"),
        ({"k1": None}, "k1", "must be bytes"),
        ({"": K1}, "", "1..64"),
        ({"k" * 65: K1}, "k", "1..64"),
        ({"a\x00b": K1}, "a\x00b", "visible ASCII"),
        ({"a b": K1}, "a b", "visible ASCII"),
        ({"a,b": K1}, "a,b", "visible ASCII"),
        ({"a:b": K1}, "a:b", "visible ASCII"),
        ({"clé": K1}, "clé", "visible ASCII"),
        ({1: K1}, 1, "must be a str"),
        ({"k1": K1}, "k2", "active key id 'k2' is not one of ['k1']"),
        ({"k1": K1}, None, "active key id None"),
    ],
)
def test_bad_construction_arguments(keys: Any, active: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        EncryptedCodec(keys, active)
    assert needle in str(info.value)
    no_secret(str(info.value), K1, K1[:16], K1[:24], K1 + b"x")


def test_good_key_ids_and_bytes_like_keys() -> None:
    keys: dict[str, Any] = {"x" * 64: bytearray(K1), "prod-2024.01_a!~": memoryview(K2)}
    codec = EncryptedCodec(keys, "x" * 64)
    assert codec.decode("m", codec.encode("m", {"a": 1})) == {"a": 1}


def test_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    spec = importlib.util.spec_from_file_location(
        "deploysm.stores._crypto_without",
        Path(sys.modules[EncryptedCodec.__module__].__file__ or ""),
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing must not need cryptography
    assert len(module.EncryptedCodec.generate_key()) == 32
    with pytest.raises(ImportError, match=r"pip install 'deploysm\[crypto\]'"):
        module.EncryptedCodec({"k1": K1}, "k1")


# -- key text and from_env -------------------------------------------------


def test_generate_key_and_text_form() -> None:
    key = EncryptedCodec.generate_key()
    assert isinstance(key, bytes) and len(key) == 32 and key != EncryptedCodec.generate_key()
    text = EncryptedCodec.key_to_text(key)
    assert EncryptedCodec.key_from_text(text) == key
    assert EncryptedCodec.key_from_text(f"  {text.rstrip('=')}\n") == key
    assert EncryptedCodec.key_from_text(base64.b64encode(key).decode()) == key  # standard alphabet


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not*base64!", "not valid base64"),
        ("abcde", "not valid base64"),
        (base64.urlsafe_b64encode(K1[:16]).decode(), "16 bytes; expected 32"),
        ("", "0 bytes"),
        (b"bytes", "must be a str"),
    ],
)
def test_bad_key_text(text: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        EncryptedCodec.key_from_text(text)


def test_from_env_first_id_is_active() -> None:
    t1, t2 = EncryptedCodec.key_to_text(K1), EncryptedCodec.key_to_text(K2)
    codec = EncryptedCodec.from_env(environ={"DEPLOYSM_KEYS": f" k2:{t2} , k1 : {t1.rstrip('=')} "})
    assert codec.active_key_id == "k2" and codec.key_ids == {"k1", "k2"}
    assert codec.decode("m-1", BLOB) == DATA
    assert (
        EncryptedCodec.from_env("MY_KEYS", environ={"MY_KEYS": f"k1:{t1}"}).decode("m-1", BLOB)
        == DATA
    )
    assert EncryptedCodec.from_string(f"k1:{t1}").decode("m-1", BLOB) == DATA


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYSM_KEYS", f"k1:{EncryptedCodec.key_to_text(K1)}")
    assert EncryptedCodec.from_env().decode("m-1", BLOB) == DATA
    monkeypatch.delenv("DEPLOYSM_KEYS")
    with pytest.raises(ValueError, match="DEPLOYSM_KEYS is unset or empty"):
        EncryptedCodec.from_env()


T1 = EncryptedCodec.key_to_text(K1)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "unset or empty"),
        ("   ", "unset or empty"),
        (T1, "entry 1 is not 'id:base64key'"),
        (f"k1:{T1},", "entry 2 is not 'id:base64key'"),
        (f"k1:{T1},k2:", "entry 2 is not 'id:base64key'"),
        (f":{T1}", "entry 1 is not"),
        ("k1:***", "entry 1 ('k1'): key text is not valid base64"),
        (f"k1:{T1[:20]}", "entry 1 ('k1'): key text decodes to 15 bytes"),
        (f"k 1:{T1}", "entry 1 ('k 1'): key id"),
        (f"k1:{T1},k1:{T1}", "key id 'k1' appears twice"),
        (f"k1={T1}", "entry 1 is not"),
    ],
)
def test_from_env_bad_values(value: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        EncryptedCodec.from_env(environ={"DEPLOYSM_KEYS": value})
    message = str(info.value)
    assert needle in message
    assert "DEPLOYSM_KEYS" in message and "'id1:base64key,id2:base64key'" in message
    no_secret(message, K1)
    assert T1[:20] not in message
