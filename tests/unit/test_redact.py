"""Tests for deploysm.core._redact: secret keys, text patterns, deep copies, properties."""

from __future__ import annotations

import copy
import re
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploysm.core._redact import DEFAULT_REDACTOR, DEFAULT_SECRET_KEYS, REDACTED, Redactor

R = DEFAULT_REDACTOR


# --------------------------------------------------------------------------- keys


def test_constants() -> None:
    assert REDACTED == "[REDACTED]"
    assert isinstance(DEFAULT_SECRET_KEYS, tuple)
    for required in (
        "password", "passwd", "pwd", "token", "secret", "api_key", "apikey", "api-key",
        "authorization", "auth", "cookie", "set-cookie", "session", "private_key",
        "credential", "credentials", "access_key", "client_secret", "bearer",
    ):  # fmt: skip
        assert required in DEFAULT_SECRET_KEYS
    assert isinstance(DEFAULT_REDACTOR, Redactor)


@pytest.mark.parametrize(
    "key",
    [
        "password", "PASSWORD", "Password", "db_password", "dbPassword", "passwd", "pwd",
        "token", "githubToken", "GITHUB_TOKEN", "refresh-token", "X-Auth-Token", "secret",
        "client_secret", "clientSecret", "api_key", "apiKey", "API-KEY", "ApiKey", "x_api_key",
        "api.key", "Api Key", "authorization", "Authorization", "Proxy-Authorization",
        "authorise", "auth", "oauth", "auth_header", "cookie", "Set-Cookie", "session",
        "sessionId", "private_key", "privateKey", "credential", "credentials", "awsCredentials",
        "access_key", "AWS_ACCESS_KEY_ID", "bearer", "bearer_token", "passphrase", "jwt",
    ],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert R.is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "author", "Author", "authors", "authorName", "co-author", "coauthor", "authority",
        "tokenizer", "tokenizer_name", "tokenise", "secretary", "version", "message", "name",
        "key", "id", "user", "username", "state", "host", "url", "keyboard", "monkey", "",
    ],
)  # fmt: skip
def test_non_secret_keys(key: str) -> None:
    assert not R.is_secret_key(key)


def test_author_followed_by_a_real_fragment_is_still_secret() -> None:
    assert R.is_secret_key("authorToken")
    assert R.is_secret_key("author_password")
    assert R.is_secret_key("authorization_author")


def test_is_secret_key_is_cached() -> None:
    r = Redactor()
    r.is_secret_key("apiKey")
    r.is_secret_key("apiKey")
    info = r._is_secret.cache_info()  # type: ignore[attr-defined]
    assert info.hits >= 1 and info.misses == 1


def test_custom_keys_replace_defaults() -> None:
    r = Redactor(keys=["pin", "Ssn"])
    assert r.is_secret_key("PIN") and r.is_secret_key("user_ssn")
    assert not r.is_secret_key("password")
    assert r.keys == ("pin", "ssn")
    assert r.redact_text("password=abc pin=1234") == "password=abc pin=[REDACTED]"
    assert r.redact_mapping({"password": "x", "pin": 1}) == {"password": "x", "pin": REDACTED}


def test_extra_keys_add_to_defaults() -> None:
    r = Redactor(extra_keys=["pin", "otp_code"])
    assert r.is_secret_key("pin") and r.is_secret_key("OTP-Code") and r.is_secret_key("token")
    assert not R.is_secret_key("pin")
    r2 = Redactor(keys=["pin"], extra_keys=["ssn"])
    assert r2.is_secret_key("ssn") and r2.is_secret_key("pin") and not r2.is_secret_key("token")


def test_custom_key_spellings_are_normalised_and_deduplicated() -> None:
    r = Redactor(keys=["api_key", "API-KEY", "apiKey", "", "--"])
    assert r.keys == ("apikey",)
    assert r.is_secret_key("x-api-key")


def test_empty_keys_redact_nothing_by_key() -> None:
    r = Redactor(keys=[])
    assert not r.is_secret_key("password")
    assert r.redact_text("password=abc") == "password=abc"
    assert r.redact_mapping({"password": "abc"}) == {"password": "abc"}
    # URL userinfo is format-based and stays on.
    assert r.redact_text("https://u:pw@h") == "https://u:[REDACTED]@h"


def test_benign_exceptions_apply_to_custom_auth_fragment() -> None:
    r = Redactor(keys=["auth"])
    assert r.is_secret_key("auth_token") and not r.is_secret_key("author")


def test_repr() -> None:
    assert "apikey" in repr(R)


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=abc", "password=[REDACTED]"),
        ("password = abc", "password = [REDACTED]"),
        ("password: abc", "password: [REDACTED]"),
        ("password:abc", "password:[REDACTED]"),
        # An unquoted secret value runs to the end of its line (it may hold spaces).
        ("login failed: password=hunter2 for user bob", "login failed: password=[REDACTED]"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "[REDACTED]", "user": "bob"}'),
        ("{'password': 'hunter2', 'user': 'bob'}", "{'password': '[REDACTED]', 'user': 'bob'}"),
        ('{"password": 12345, "n": 1}', '{"password": [REDACTED], "n": 1}'),
        ('token="quoted value with spaces" next', 'token="[REDACTED]" next'),
        ("token='single quoted' next", "token='[REDACTED]' next"),
        ('password="a \\" b" x', 'password="[REDACTED]" x'),
        ('password="" x', 'password="[REDACTED]" x'),
        ("Authorization: Bearer xyz", "Authorization: Bearer [REDACTED]"),
        (
            "Authorization: Bearer eyJhbGc.eyJzdWIi.SflKx==, retrying",
            "Authorization: Bearer [REDACTED]",
        ),
        ("authorization: basic dXNlcjpwYXNz", "authorization: basic [REDACTED]"),
        ("Authorization: Bearer", "Authorization: [REDACTED]"),
        ("Authorization: s3cr3t", "Authorization: [REDACTED]"),
        ("X-Auth-Token: Token abc123", "X-Auth-Token: Token [REDACTED]"),
        ("'Authorization': 'Bearer abc'", "'Authorization': '[REDACTED]'"),
        ("Authorization: Bearer 'abc def'", "Authorization: Bearer '[REDACTED]'"),
        ("postgres://admin:hunter2@db:5432/app", "postgres://admin:[REDACTED]@db:5432/app"),
        ("redis://:pw@cache:6379", "redis://:[REDACTED]@cache:6379"),
        ("mysql://u:p@ss@h/db", "mysql://u:[REDACTED]@h/db"),
        (
            "see https://user:pa55@example.com/x?y=1 now",
            "see https://user:[REDACTED]@example.com/x?y=1 now",
        ),
        (
            "https://api.example.com/v1?token=abc&x=1",
            "https://api.example.com/v1?token=[REDACTED]&x=1",
        ),
        ("https://h/p?x=1&api_key=abc&y=2", "https://h/p?x=1&api_key=[REDACTED]&y=2"),
        ("https://h/p?x=1&apiKey=abc", "https://h/p?x=1&apiKey=[REDACTED]"),
        ("a=1, password=abc, b=2", "a=1, password=[REDACTED], b=2"),
        ("a=1; password=abc; b=2", "a=1; password=[REDACTED]; b=2"),
        ("f(password=abc)", "f(password=[REDACTED])"),
        ("{password=abc}", "{password=[REDACTED]}"),
        ("password=abc\tnext", "password=[REDACTED]"),
        ("password=abc\tnext=1", "password=[REDACTED]\tnext=1"),
        ("password=abc\nnext=1", "password=[REDACTED]\nnext=1"),
        ("API-KEY=abc", "API-KEY=[REDACTED]"),
        ("apiKey: abc", "apiKey: [REDACTED]"),
        ("GITHUB_TOKEN=ghp_abc", "GITHUB_TOKEN=[REDACTED]"),
        ("X-Auth-Token: abc", "X-Auth-Token: [REDACTED]"),
        ("Set-Cookie: sid=abc; Path=/", "Set-Cookie: [REDACTED]; Path=/"),
        ("--password=abc", "--password=[REDACTED]"),
        ("db.password=abc", "db.password=[REDACTED]"),
        ("password==abc", "password==[REDACTED]"),
        ("token := abc", "token := [REDACTED]"),
        ("password=p@ss=w0rd!", "password=[REDACTED]"),
    ],
)
def test_redact_text_patterns(text: str, expected: str) -> None:
    assert R.redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nothing to see here",
        "author=bob version=1.2.3 message=hello",
        "author: Jane, authority: ACME",
        "tokenizer_name=bert-base",
        "the secretary: bob",
        "http://host:8080/path?x=1",
        "https://example.com/a@b",
        "state=deploying attempt=3 id=abc",
        "ratio 12:30 and a:b",
        "key=value",
    ],
)
def test_redact_text_leaves_non_secrets_alone(text: str) -> None:
    assert R.redact_text(text) == text


def test_nested_secret_in_non_secret_value() -> None:
    assert R.redact_text('msg="password=abc" done') == 'msg="password=[REDACTED]" done'
    assert R.redact_text("url=https://u:pw@h/x") == "url=https://u:[REDACTED]@h/x"


def test_url_scheme_is_not_mistaken_for_a_key() -> None:
    assert R.redact_text("_scheme://user:pw@host") == "_scheme://user:[REDACTED]@host"
    assert R.redact_text("x_https://u:pw@h") == "x_https://u:[REDACTED]@h"


def test_escaped_json_in_message() -> None:
    text = r"body={\"password\": \"abc\", \"user\": \"bob\"}"
    assert R.redact_text(text) == r"body={\"password\": \"[REDACTED]\", \"user\": \"bob\"}"


def test_unterminated_quote_redacts_to_end_of_line() -> None:
    assert R.redact_text('password="abc def\nnext') == 'password="[REDACTED]\nnext'
    assert R.redact_text("password='abc def") == "password='[REDACTED]"


def test_trailing_quote_after_raw_value_is_kept() -> None:
    assert R.redact_text('{"x": "password=abc"}') == '{"x": "password=[REDACTED]"}'


def test_many_pairs_in_one_message() -> None:
    text = "token=a1 user=bob secret: b2 'apiKey': 'c3' https://u:d4@h Authorization: Bearer e5"
    out = R.redact_text(text)
    for leaked in ("a1", "b2", "c3", "d4", "e5"):
        assert leaked not in out
    assert "user=bob" in out and out.count(REDACTED) == 5


def test_redact_text_fast_path_returns_same_object() -> None:
    text = "x" * 1000 + " state=ok"
    assert R.redact_text(text) is text


def test_redact_text_is_linear_on_long_words() -> None:
    blob = "a" * 200_000
    start = time.perf_counter()
    assert R.redact_text("token " + blob) == "token " + blob
    assert R.redact_text("password=" + blob) == "password=[REDACTED]"
    assert R.redact_text("https://" + blob) == "https://" + blob
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- errors


def test_redact_error() -> None:
    assert R.redact_error(ValueError("bad password=abc")) == "bad password=[REDACTED]"
    assert R.redact_error(RuntimeError()) == "RuntimeError"
    assert R.redact_error(KeyError("token")) == "'token'"


def test_redact_error_when_str_raises() -> None:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert R.redact_error(Nasty()) == "Nasty"


# --------------------------------------------------------------------------- mappings


def test_redact_mapping_nested() -> None:
    data: dict[str, Any] = {
        "author": "jane",
        "version": 3,
        "message": "deploy with token=abc",
        "db": {"host": "h", "db_password": "hunter2", "port": 5432},
        "steps": [{"name": "s1", "apiKey": "k1"}, ("x", {"SECRET": "s"}), "password: p"],
        "credentials": {"user": "u", "pass": "p"},
        "session": 12345,
        "cookie": ["a", "b"],
        "enabled": True,
        "nothing": None,
    }
    assert R.redact_mapping(data) == {
        "author": "jane",
        "version": 3,
        "message": "deploy with token=[REDACTED]",
        "db": {"host": "h", "db_password": REDACTED, "port": 5432},
        "steps": [
            {"name": "s1", "apiKey": REDACTED},
            ("x", {"SECRET": REDACTED}),
            "password: [REDACTED]",
        ],
        "credentials": REDACTED,
        "session": REDACTED,
        "cookie": REDACTED,
        "enabled": True,
        "nothing": None,
    }


def test_redact_mapping_does_not_mutate_input() -> None:
    data: dict[str, Any] = {"a": {"token": "t", "b": ["password=x", {"secret": 1}]}, "t": (1, [2])}
    before = copy.deepcopy(data)
    out = R.redact_mapping(data)
    assert data == before
    assert out is not data and out["a"] is not data["a"] and out["a"]["b"] is not data["a"]["b"]
    assert out["t"][1] is not data["t"][1]


def test_redact_mapping_types() -> None:
    obj = object()
    assert R.redact_mapping("password=abc") == "password=[REDACTED]"
    assert R.redact_mapping(42) == 42
    assert R.redact_mapping(None) is None
    assert R.redact_mapping(obj) is obj
    out = R.redact_mapping({"x": obj, "t": ("a", "token=b"), 1: "v", (1, 2): {"pwd": 1}})
    assert out == {"x": obj, "t": ("a", "token=[REDACTED]"), 1: "v", (1, 2): {"pwd": REDACTED}}
    assert out["x"] is obj and type(out["t"]) is tuple


def test_redact_mapping_accepts_any_mapping() -> None:
    from types import MappingProxyType

    out = R.redact_mapping(MappingProxyType({"token": "t", "n": 1}))
    assert out == {"token": REDACTED, "n": 1} and type(out) is dict


def test_redact_mapping_self_cycle() -> None:
    data: dict[str, Any] = {"password": "x", "name": "n"}
    data["self"] = data
    out = R.redact_mapping(data)
    assert out["password"] == REDACTED and out["name"] == "n"
    assert out["self"] is out
    assert data["password"] == "x" and data["self"] is data


def test_redact_mapping_list_cycle_through_tuple() -> None:
    inner: list[Any] = ["token=abc"]
    outer = (inner, {"secret": 1})
    inner.append(outer)
    out = R.redact_mapping(outer)
    assert out[0][0] == "token=[REDACTED]" and out[1] == {"secret": REDACTED}
    assert out[0][1][0] is out[0]  # the cycle is preserved, not expanded


def test_redact_mapping_shared_references_stay_shared() -> None:
    shared = {"token": "t"}
    out = R.redact_mapping({"a": shared, "b": shared})
    assert out["a"] is out["b"] and out["a"] == {"token": REDACTED}


def test_redact_mapping_deep_nesting_does_not_recurse_forever() -> None:
    deep: Any = {"password": "x"}
    for _ in range(5000):
        deep = [deep]
    out = R.redact_mapping(deep)
    node = out
    while isinstance(node, list):
        node = node[0]
    assert node == REDACTED  # beyond the depth limit the whole subtree is hidden


# --------------------------------------------------------------------------- properties

SECRET_KEY_SPELLINGS = [
    "password", "Password", "db_password", "apiKey", "API-KEY", "api_key", "token",
    "githubToken", "X-Auth-Token", "secret", "client_secret", "Authorization", "cookie",
    "session", "credentials", "access_key", "private_key", "bearer", "pwd", "passwd",
]  # fmt: skip
PLAIN_KEYS = ["author", "version", "message", "name", "id", "state", "tokenizer_name", "url"]

# Secret values use digits and Greek letters; the surrounding text uses neither, so a value
# can only appear in the output if it leaked. Surrounding text also avoids ``=``, ``:`` and
# quotes, so it cannot itself open another ``key=value`` pair that swallows the one under test.
VALUE_ALPHABET = string.digits + "αβγδεζηθλμξπσφψω"
SURROUNDING_ALPHABET = string.ascii_letters + " \t\n,;&)}(!?#%*+-./<>@[]^_`{|~"
secret_values = st.text(alphabet=VALUE_ALPHABET, min_size=1, max_size=20)
surrounding = st.text(alphabet=SURROUNDING_ALPHABET, max_size=40)
FORMATS = [
    "{k}={v}", "{k} = {v}", "{k}: {v}", '"{k}": "{v}"', "'{k}': '{v}'", '{k}="{v}"',
    "{k}='{v}'", "?{k}={v}&x=y", "Authorization: Bearer {v}", "scheme://user:{v}@host",
]  # fmt: skip


@settings(max_examples=300)
@given(
    prefix=surrounding,
    suffix=surrounding,
    value=secret_values,
    key=st.sampled_from(SECRET_KEY_SPELLINGS),
    fmt=st.sampled_from(FORMATS),
)
def test_property_secret_value_never_survives(
    prefix: str, suffix: str, value: str, key: str, fmt: str
) -> None:
    text = prefix + fmt.format(k=key, v=value) + suffix
    out = R.redact_text(text)
    assert value not in out
    assert REDACTED in out


@settings(max_examples=200)
@given(prefix=surrounding, suffix=surrounding, value=secret_values)
def test_property_password_pair(prefix: str, suffix: str, value: str) -> None:
    assert value not in R.redact_text(f"{prefix}password={value}{suffix}")


class Secret:
    """A value that may only ever appear under a secret key."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    secret_entry = st.tuples(st.sampled_from(SECRET_KEY_SPELLINGS), st.builds(Secret) | children)
    plain_entry = st.tuples(st.sampled_from(PLAIN_KEYS) | st.text(max_size=12), children)
    return (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=4).map(tuple)
        | st.lists(secret_entry | plain_entry, max_size=6).map(dict)
    )


json_like = st.recursive(json_leaves, _containers, max_leaves=40)


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def _check_parallel(src: Any, out: Any) -> None:
    if isinstance(src, str):
        assert out == R.redact_text(src)
    elif isinstance(src, dict):
        assert type(out) is dict and list(out) == list(src)
        for k, v in src.items():
            if isinstance(k, str) and R.is_secret_key(k):
                assert out[k] == REDACTED
            else:
                _check_parallel(v, out[k])
    elif isinstance(src, list | tuple):
        assert type(out) is type(src) and len(out) == len(src)
        for a, b in zip(src, out, strict=True):
            _check_parallel(a, b)
    else:
        assert out is src


@settings(max_examples=300)
@given(data=json_like)
def test_property_redact_mapping_hides_secret_values(data: Any) -> None:
    before = copy.deepcopy(data)
    out = R.redact_mapping(data)
    assert not any(isinstance(node, Secret) for node in _walk(out))
    _check_parallel(data, out)
    assert data == before  # not mutated


# Idempotence: text built from tokens that exercise every rule and their interactions.
TEXT_TOKENS = [
    "password", "token", "Authorization", "author", "apiKey", "X-Auth-Token", "url", "x",
    "=", "==", ":", ": ", " = ", "=>", ":=", " ", "\t", "\n", ",", ";", "&", ")", "}", "{",
    "(", '"', "'", "\\", '\\"', "Bearer ", "Basic ", "://", "https://", "u:", "@", "?", "/",
    "#", "abc", "p@ss", "[REDACTED]", "[", "]", "-", "_", ".",
]  # fmt: skip
token_soup = st.lists(st.sampled_from(TEXT_TOKENS) | st.text(max_size=3), max_size=30).map("".join)


@settings(max_examples=500)
@given(text=token_soup)
def test_property_redact_text_idempotent(text: str) -> None:
    once = R.redact_text(text)
    assert R.redact_text(once) == once


@settings(max_examples=200)
@given(text=st.text(max_size=80))
def test_property_redact_text_idempotent_arbitrary(text: str) -> None:
    once = R.redact_text(text)
    assert R.redact_text(once) == once


@settings(max_examples=200)
@given(data=json_like)
def test_property_redact_mapping_idempotent(data: Any) -> None:
    once = R.redact_mapping(data)
    assert R.redact_mapping(once) == once


# --------------------------------------------------------------------------- erring on hiding

# Forms an adversarial trial found leaking: a secret key hides the whole rest of its
# line (up to the next ``key=``-like pair), and any Bearer/Basic credential is hidden
# even without a key in front of it.
LEAKS = [
    ("password is hunter2", "password is [REDACTED]"),
    ("the password was hunter2", "the password was [REDACTED]"),
    ("got Bearer eyJhbGciOi.x-y_z", "got Bearer [REDACTED]"),
    ("retrying with basic dXNlcjpwYXNz now", "retrying with basic [REDACTED] now"),
    ("password=\nhunter2\nnext", "password=\n[REDACTED]\nnext"),
    ("password:\n   hunter2", "password:\n   [REDACTED]"),
    ("password=pw X", "password=[REDACTED]"),
    ("client_secret=a,X", "client_secret=[REDACTED]"),
    ("password=pw X, user=bob", "password=[REDACTED], user=bob"),
    ("token=a1 b2 c3\nstate=ok", "token=[REDACTED]\nstate=ok"),
]


@pytest.mark.parametrize(("text", "expected"), LEAKS)
def test_secret_values_with_spaces_commas_and_newlines_are_hidden(text: str, expected: str) -> None:
    assert R.redact_text(text) == expected


# Values that hold spaces, commas, semicolons and other punctuation, in any of the
# separators a person writes, possibly on the line after the key.
loose_values = st.lists(
    st.text(alphabet=VALUE_ALPHABET, min_size=1, max_size=8), min_size=1, max_size=4
).flatmap(
    lambda words: st.lists(
        st.sampled_from([" ", ",", ", ", ";", "\t", " - "]),
        min_size=len(words) - 1,
        max_size=len(words) - 1,
    ).map(lambda seps: "".join(w + s for w, s in zip(words, [*seps, ""], strict=True)))
)
LOOSE_FORMATS = [
    "{k}={v}", "{k} = {v}", "{k}: {v}", "{k} is {v}", "{k} was {v}", "{k}=\n{v}",
    "{k}:\n  {v}", "Bearer {v}", "bearer {v}",
]  # fmt: skip
line_text = st.text(alphabet=string.ascii_letters + " ,;.!?()", max_size=30)


@settings(max_examples=400)
@given(
    prefix=line_text,
    value=loose_values,
    key=st.sampled_from(SECRET_KEY_SPELLINGS),
    fmt=st.sampled_from(LOOSE_FORMATS),
    after=st.sampled_from(["", "\nstate=ok", "\n"]),
)
def test_property_whole_secret_value_is_hidden(
    prefix: str, value: str, key: str, fmt: str, after: str
) -> None:
    if fmt.startswith(("Bearer", "bearer")):
        value = re.split(r"[ \t,;-]+", value)[0]  # a credential is one token
    text = prefix + " " + fmt.format(k=key, v=value) + after
    out = R.redact_text(text)
    for piece in value.replace(",", " ").replace(";", " ").replace("-", " ").split():
        assert piece not in out, (text, out)
    assert R.redact_text(out) == out
