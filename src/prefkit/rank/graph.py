"""Connectivity of comparison graphs, in numpy: connected components (label propagation along
the edges with pointer jumping) and strong connectivity (reachability both ways from one
node). ``scipy.sparse.csgraph`` does the same but takes longer to import than a leaderboard of a
million votes takes to compute; these cost ``O(edges)`` per sweep, a few sweeps for arena
graphs (small diameter)."""

from __future__ import annotations

import numpy as np


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label of every node of the undirected graph with edges ``i[k] - j[k]``:
    labels ``0..k-1`` numbered by each component's smallest node (isolated nodes are
    components of their own)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    label = np.arange(n)
    while True:
        low = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        np.minimum.at(new, label, new)  # a root takes the smallest label among its members
        while True:  # pointer jumping: label -> label of the label (always a smaller node)
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return np.unique(label, return_inverse=True)[1]
        label = new


def _reachable(n: int, src: np.ndarray, dst: np.ndarray, start: int) -> np.ndarray:
    seen = np.zeros(n, dtype=bool)
    seen[start] = True
    while True:
        new = seen.copy()
        new[dst[seen[src]]] = True
        if np.array_equal(new, seen):
            return seen
        seen = new


def strongly_connected(n: int, src: np.ndarray, dst: np.ndarray,
                       members: np.ndarray | None = None) -> bool:
    """Whether the directed graph with edges ``src[k] -> dst[k]``, restricted to ``members``
    (default all nodes), is strongly connected: every member reaches, and is reached from, the
    first one within the members."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    members = np.arange(n) if members is None else np.asarray(members, dtype=np.int64)
    if len(members) < 2:
        return True
    inside = np.zeros(n, dtype=bool)
    inside[members] = True
    keep = inside[src] & inside[dst]
    src, dst = src[keep], dst[keep]
    start = int(members[0])
    return bool(_reachable(n, src, dst, start)[members].all()
                and _reachable(n, dst, src, start)[members].all())
