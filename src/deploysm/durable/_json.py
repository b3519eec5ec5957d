"""A stored machine's snapshot JSON, assembled from pieces encoded once per machine.

Every durable save writes the whole snapshot, and a machine's history grows by one
entry per transition; re-encoding it all made each save cost more the older the
machine. ``SnapshotJSON.dumps(snapshot)`` returns exactly
``json.dumps(snapshot.to_dict(), separators=(",", ":"), allow_nan=False)`` (the text
``JSONCodec`` and ``EncryptedCodec`` store) but encodes each ``history`` entry and each
finished ``metrics.states`` visit only the first time it is saved. That is sound
because of how the engine changes them:

* ``history`` grows at the end (``append``) and, past ``history_limit``, loses entries
  at the front; its entries are frozen ``State`` records.
* ``metrics.states``: only the last visit is ever changed (its exit time when a
  transition commits, its errors when one fails) before the next is appended; a
  visit that is no longer last stays as it is. Old visits drop off the front.

So the cache keeps the entries it encoded (alive, as objects) with their text, and
reuses the text of each entry that is the very same object as the cached one at the
same place after the dropped front; from the first entry that is not, everything is
encoded afresh (``rehydrate``/``resume`` put new objects in, so all of it then). The
header, ``current_state``,
``context``, the last visit, the totals and the fields after ``metrics`` are encoded
afresh on every save. (A history entry's ``data`` is encoded as it was when first
saved: a payload object the caller mutates afterwards no longer rewrites history.)

Only machines with a store get a cache (see ``build_snapshot(copy=False)``); it is
kept in the machine's ``_json`` slot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._format import Document, head_out, metrics_out, state_out, tail_out, visit_out

__all__ = ["SnapshotJSON", "cache_for"]

T = TypeVar("T")

# What ``json.dumps(data, separators=(",", ":"), allow_nan=False)`` builds on every call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def cache_for(machine: Any) -> SnapshotJSON:
    """The snapshot JSON cache of ``machine``, made on first use."""
    cache: SnapshotJSON | None = machine._json
    if cache is None:
        cache = machine._json = SnapshotJSON()
    return cache


class _Prefix(Generic[T]):
    """The JSON of the first ``count`` items of one list, comma separated."""

    __slots__ = ("_items", "_out", "_texts")

    def __init__(self, out: Callable[[T], dict[str, Any]]) -> None:
        self._out = out
        self._items: list[T] = []  # the items last encoded, kept alive
        self._texts: list[str] = []  # their JSON

    def text(self, items: list[T], count: int) -> str:
        cached = self._items
        start = keep = 0
        if count and cached:
            first = items[0]
            start = next((i for i, c in enumerate(cached) if c is first), len(cached))
            limit = min(len(cached) - start, count)
            while keep < limit and cached[start + keep] is items[keep]:
                keep += 1
        out = self._out
        texts = self._texts[start : start + keep]
        texts.extend([_encode(out(item)) for item in items[keep:count]])
        # assigned only once everything encoded: a failed encode leaves the cache as it was
        self._items, self._texts = items[:count], texts
        return ",".join(texts)


class SnapshotJSON:
    """One machine's encoded history entries and finished metrics visits."""

    __slots__ = ("_history", "_visits")

    def __init__(self) -> None:
        self._history = _Prefix(state_out)
        self._visits = _Prefix(visit_out)

    def dumps(self, s: Document) -> str:
        """``s`` as compact JSON, byte for byte what ``json.dumps(s.to_dict())`` gives."""
        head = _encode(head_out(s))  # '{"schema_version":...,"context":...}'
        history = self._history.text(s.history, len(s.history))
        visits = s.metrics.states
        finished = self._visits.text(visits, max(len(visits) - 1, 0))
        # '{"metrics":{"states":[<last visit>],"total_duration_ms":...},"in_flight":...}'
        rest = _encode({"metrics": metrics_out(s.metrics, visits[-1:]), **tail_out(s)})
        return "".join(
            (
                head[:-1],
                ',"history":[',
                history,
                _METRICS,
                finished,
                "," if finished else "",  # a finished visit is never the last one
                rest[len(_REST) :],
            )
        )


_METRICS = '],"metrics":{"states":['
_REST = '{"metrics":{"states":['
