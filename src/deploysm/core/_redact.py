"""Redaction of secrets in metadata and error messages.

A key is *normalised* (lower-cased; ``_``, ``-``, ``.`` and whitespace removed) and is secret
when it *contains* a normalised secret fragment: ``apiKey``, ``API-KEY`` and ``x_api_key`` all
contain ``apikey``; ``db_password``, ``githubToken`` and ``X-Auth-Token`` are secret too. The
rule errs on the side of hiding (``password_min_length`` and ``max_tokens`` are redacted), with
a few explicit exceptions for common words that merely contain a fragment: ``author``,
``authority``, ``coauthor`` (``auth`` + ``or``, unlike ``authorization``/``authorise``),
``tokenizer``/``tokenise`` and ``secretary``. The exceptions apply to the fragments ``auth``,
``token`` and ``secret`` whether they come from the defaults or from custom keys.

In text the rule errs on the side of hiding too. After a secret key and a separator (``=``,
``:``, ``=>``, ``:=``, `` is ``, `` was ``), an unquoted value runs to the end of its line,
spaces and commas included, and stops only before another ``key=``-like pair on that line
(``a=1, password=x y, b=2`` keeps ``b=2``); a key at the end of a line hides the next line.
A quoted value ends at its closing quote, or at the end of the line when the quote is never
closed. Whatever the configured keys, URL userinfo passwords (``scheme://user:pass@host``)
and any ``Bearer``/``Basic`` credential are hidden.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_REDACTOR", "DEFAULT_SECRET_KEYS", "REDACTED", "Redactor"]

REDACTED = "[REDACTED]"

DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "password", "passwd", "pwd", "passphrase", "token", "secret", "api_key", "apikey",
    "api-key", "authorization", "auth", "cookie", "set-cookie", "session", "private_key",
    "credential", "credentials", "access_key", "client_secret", "bearer", "jwt",
)  # fmt: skip

# Fragment -> what may not follow it for the match to count (non-secret words).
_BENIGN_CONTINUATIONS: dict[str, str] = {
    "auth": r"or(?!i[sz])",  # author, authority, coauthor -- but authorization, authorise
    "token": r"i[sz]",  # tokenizer, tokenise, tokenization
    "secret": r"ar",  # secretary
}
# Keys whose values often read "<scheme> <credential>": the scheme is kept, the rest hidden.
_SCHEMED_KEYS = ("auth", "token", "bearer")
_MAX_DEPTH = 100  # containers nested deeper than this are replaced wholesale

_SEPARATORS = re.compile(r"[\s._\-]+")
_VALUE_END = r"\s,;&)}"
_CREDENTIAL = r"[^\s,;'\"\[]+"
# One left-to-right scan: URL userinfo, a bare Bearer/Basic credential, or ``key<sep>``
# (the value is parsed separately).
_SCAN = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<url>[A-Za-z0-9+.\-]+://[\w.%~+\-]*:)(?P<pw>[^\s/?#\"']+)@"
    r"|(?<![\w.\-])(?P<key>[\w.\-]+)(?:\\?[\"'])?"
    r"(?:[ \t]*(?:=>|==?|:(?!//)=?)|[ \t]+(?i:is|was)(?![\w.\-]))[ \t]*"
    rf"|(?<![\w.\-])(?i:bearer|basic)[ \t]+(?P<cred>{_CREDENTIAL})"
)
_VALUE = re.compile(
    r"(?P<q>\\?[\"'])(?:\\[^\n]|[^\n])*?(?:(?P<close>(?P=q))|(?=\n)|\Z)"
    r"|(?P<raw>[^\s][^\n]*)"
)
# Where an unquoted value stops: before another ``key=``-like pair on its line.
_NEXT_PAIR = re.compile(
    r"(?:[ \t]*[,;&][ \t]*|[ \t]+)(?=[\"']?[A-Za-z_][\w.\-]*[\"']?[ \t]*(?:=|:(?:[ \t]|$)))",
    re.MULTILINE,
)
_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
_SCHEME = re.compile(
    r"(?i:bearer|basic|digest|token|negotiate|ntlm|hoba|mutual|oauth|aws4-hmac-sha256)"
    rf"[ \t]+(?=[^{_VALUE_END}])"
)


def _normalise(key: str) -> str:
    return _SEPARATORS.sub("", key.lower())


class Redactor:
    """Replaces values under secret-looking keys with :data:`REDACTED`.

    ``keys`` replaces :data:`DEFAULT_SECRET_KEYS`; ``extra_keys`` adds to them (or to ``keys``).
    """

    __slots__ = ("_is_secret", "_key_re", "_precheck", "keys")

    def __init__(self, keys: Iterable[str] | None = None, extra_keys: Iterable[str] = ()) -> None:
        chosen = [*(DEFAULT_SECRET_KEYS if keys is None else keys), *extra_keys]
        fragments = dict.fromkeys(n for n in map(_normalise, chosen) if n)
        self.keys: tuple[str, ...] = tuple(fragments)
        """The normalised fragments, in order, without duplicates."""
        alternatives = [
            re.escape(f) + (f"(?!{_BENIGN_CONTINUATIONS[f]})" if f in _BENIGN_CONTINUATIONS else "")
            for f in self.keys
        ]
        self._key_re = re.compile("|".join(alternatives) or r"(?!)")
        # Cheap test for "could anything here need redacting?" on raw text.
        loose = ["[._\\-]*".join(map(re.escape, f)) for f in self.keys]
        self._precheck = re.compile("|".join([*loose, "://", "bearer", "basic"]), re.IGNORECASE)
        self._is_secret: Callable[[str], bool] = functools.lru_cache(maxsize=4096)(
            self._compute_is_secret
        )

    def __repr__(self) -> str:
        return f"Redactor(keys={self.keys!r})"

    def _compute_is_secret(self, key: str) -> bool:
        return self._key_re.search(_normalise(key)) is not None

    def is_secret_key(self, key: str) -> bool:
        """Whether values under ``key`` must be hidden (cached)."""
        return self._is_secret(key)

    def redact_text(self, text: str) -> str:
        """``text`` with secret values in ``key=value``-like pairs and URLs replaced."""
        if not self._precheck.search(text):
            return text
        out: list[str] = []
        last = pos = 0
        while (m := _SCAN.search(text, pos)) is not None:
            if m.group("url") is not None:
                out += [text[last : m.start("pw")], REDACTED]
                last, pos = m.end("pw"), m.end()
                continue
            if m.group("cred") is not None:
                out += [text[last : m.start("cred")], REDACTED]
                last = pos = m.end()
                continue
            pos = m.end()
            key = m.group("key")
            if not self.is_secret_key(key):
                continue
            if any(s in _normalise(key) for s in _SCHEMED_KEYS) and (
                scheme := _SCHEME.match(text, pos)
            ):
                pos = scheme.end()
            value = _VALUE.match(text, pos)
            if value is None and (brk := _LINE_BREAK.match(text, pos)) is not None:
                pos = brk.end()  # ``password=`` at the end of a line: the value is below
                value = _VALUE.match(text, pos)
            if value is None:
                continue
            if value.group("q") is not None:
                quote, close = value.group("q", "close")
                out += [text[last:pos], quote, REDACTED, close or ""]
                last = pos = value.end()
                continue
            end = value.end()
            stop = _NEXT_PAIR.search(text, pos + 1, end)
            if stop is not None:
                end = stop.start()
            opener = text[m.start() - 1] if m.start() else ""
            if opener in ("'", '"') and (shut := text.find(opener, pos, end)) != -1:
                end = shut  # ``msg="password=x y" rest``: the value ends with its string
            raw = text[pos:end].rstrip()
            core = raw.rstrip("\"'\\)}")
            out += [text[last:pos], REDACTED, raw[len(core) :]]
            last = pos = pos + len(raw)
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def redact_error(self, exc: BaseException) -> str:
        """The redacted ``str(exc)``, or the exception's type name when that is empty."""
        try:
            text = str(exc)
        except Exception:
            text = ""
        return self.redact_text(text) if text else type(exc).__name__

    def redact_mapping(self, value: Any) -> Any:
        """A redacted deep copy of nested mappings, lists and tuples; the input is not changed.

        Values under secret keys become :data:`REDACTED` whatever their type; strings are passed
        through :meth:`redact_text`; other objects are returned as they are. Mappings come back
        as ``dict`` and tuples as ``tuple``. Shared and cyclic references are copied as shared
        and cyclic (like :func:`copy.deepcopy`); containers nested more than 100 deep are
        replaced by :data:`REDACTED`.
        """
        return self._redact(value, {}, 0)

    def _redact(self, value: Any, memo: dict[int, tuple[Any, Any]], depth: int) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if not isinstance(value, Mapping | list | tuple):
            return value
        seen = memo.get(id(value))
        if seen is not None:
            return seen[1]
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            copied: dict[Any, Any] = {}
            memo[id(value)] = (value, copied)  # keep ``value`` alive so its id is not reused
            for k, v in value.items():
                secret = isinstance(k, str) and self.is_secret_key(k)
                copied[k] = REDACTED if secret else self._redact(v, memo, depth + 1)
            return copied
        if isinstance(value, list):
            items: list[Any] = []
            memo[id(value)] = (value, items)
            items.extend(self._redact(v, memo, depth + 1) for v in value)
            return items
        # A tuple can only be part of a cycle through a list or mapping, which the memo stops.
        return tuple(self._redact(v, memo, depth + 1) for v in value)


DEFAULT_REDACTOR = Redactor()
