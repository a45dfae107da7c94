"""Per-graph structures (CSR orders, normalized adjacencies) built once and kept on the PyG ``Data``.

An encoder called on the same graph at every step (training loops, evaluation epochs) would otherwise rebuild
them each time. The entry lives in the ``Data``'s store, outside its attributes (so batching, ``to()`` and
saving never see it), and is valid while the graph's ``edge_index`` is the very same tensor and the rest of the
key is equal; an edge list replaced by another tensor rebuilds it. In-place edits of ``edge_index`` are not
detected.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import Tensor

__all__ = ["graph_cached"]

T = TypeVar("T")


def graph_cached(
    data: object | None, name: str, edge_index: Tensor, key: Hashable, build: Callable[[], T]
) -> T:
    """``build()``, cached on ``data`` under ``name`` for this ``edge_index`` tensor and ``key``
    (``data=None`` or an object without a PyG store: no caching)."""
    store = getattr(data, "_store", None)
    cached = store.__dict__.get(name) if store is not None else None
    if cached is not None and cached[0] is edge_index and cached[1] == key:
        return cached[2]
    value = build()
    if store is not None:
        store.__dict__[name] = (edge_index, key, value)
    return value
