"""``printable`` and ``json_text``: what the CLI shows people and what it gives programs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from deploysm.core._printable import json_text, printable

ANY_TEXT = st.text(st.characters(), max_size=40)  # surrogates, controls, all planes
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), ANY_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=500)
@given(ANY_TEXT)
@example("\x1b[2J\r\n\x07\x00\x7f\x85\x9b\u202e\u2066\u2028\u2029\u200b\ufeff\udc80\U000e0001")
def test_printable_leaves_no_control_character_and_no_line_break(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    shown.encode("utf-8")  # raises on a lone surrogate, which no UTF-8 terminal takes
    if text.isprintable():
        assert shown == text


def test_printable_uses_python_escapes() -> None:
    assert printable("a\x1b[2Jb\r\n\t\u202e\udc80\xa0") == "a\\x1b[2Jb\\r\\n\\t\\u202e\\udc80\\xa0"
    assert printable("déploiement 🚀 ok") == "déploiement 🚀 ok"
    assert printable(42) == "42"


@settings(max_examples=500)
@given(json_values)
@example({"\x1b[31m": ["\x9b", "\u2028", "\udc80", "\U000e0001", "\n"]})
def test_json_text_is_the_same_json_without_control_characters(value: Any) -> None:
    text = json_text(value)
    assert all(line.isprintable() for line in text.split("\n"))
    text.encode("utf-8")  # raises on a lone surrogate
    assert json.loads(text) == value
