"""Groups as connected components of the verified-match graph, guarded against chaining.

One false link between two cells would merge their groups (and every copy of both). A link
is therefore taken as it comes only if it is strong (at least `strong` inliers) or confirmed
by a third image (i and j both linked to some k: copies of one cell are linked many times
over, while a chance triangle needs two chance links sharing an image). The remaining weak,
unconfirmed links may attach a lone image to a group, or two lone images together, but never
join two groups of two or more images: that is the one-bad-edge merge the guard exists for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

from audit.leakage.duplicates import clusters_from_pairs

__all__ = ["GraphSummary", "guarded_components"]


@dataclass(frozen=True)
class GraphSummary:
    """`edges`: distinct linked pairs at or above the threshold; `confirmed`: strong or in a
    triangle; `attached`: weak links that attached a lone image; `refused`: weak links that
    would have joined two groups; `merges_prevented`: how many more groups there are than
    had every link counted (0: the guard changed nothing)."""

    edges: int
    confirmed: int
    attached: int
    refused: int
    merges_prevented: int

    def to_dict(self) -> dict:
        return asdict(self)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)
        self.size = np.ones(n, np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            if self.size[a] < self.size[b]:
                a, b = b, a
            self.parent[b] = a
            self.size[a] += self.size[b]


def _unique_edges(rows, cols, inliers, threshold):
    """One undirected edge per linked pair with its best score, sorted by (lo, hi)."""
    rows, cols, inliers = (np.asarray(a, dtype=np.int64) for a in (rows, cols, inliers))
    linked = (inliers >= threshold) & (rows != cols)
    r, c, s = rows[linked], cols[linked], inliers[linked]
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    order = np.lexsort((-s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


def guarded_components(n: int, rows: np.ndarray, cols: np.ndarray, inliers: np.ndarray, *,
                       threshold: int, strong: int) -> tuple[np.ndarray, GraphSummary]:
    """(group id per item, numbered by first item; summary) from scored pairs."""
    lo, hi, s = _unique_edges(rows, cols, inliers, threshold)
    if len(lo):
        adjacency = csr_matrix(coo_matrix((np.ones(2 * len(lo), np.float32),
                                           (np.r_[lo, hi], np.r_[hi, lo])), shape=(n, n)))
        common = np.asarray(adjacency[lo].multiply(adjacency[hi]).sum(axis=1)).ravel()
    else:
        common = np.empty(0)
    confirmed = (s >= strong) | (common > 0)
    forest = _UnionFind(n)
    for i, j in zip(lo[confirmed], hi[confirmed], strict=True):
        forest.union(int(i), int(j))
    attached = np.zeros(len(lo), bool)
    weak = np.flatnonzero(~confirmed)
    for e in weak[np.lexsort((hi[weak], lo[weak], -s[weak]))]:  # strongest weak links first
        a, b = forest.find(int(lo[e])), forest.find(int(hi[e]))
        if a != b and min(forest.size[a], forest.size[b]) == 1:
            forest.union(a, b)
            attached[e] = True
    roots = np.array([forest.find(i) for i in range(n)], dtype=np.int64)
    groups = clusters_from_pairs(n, np.arange(n), roots)
    unguarded = clusters_from_pairs(n, lo, hi)
    n_groups = int(groups.max()) + 1 if n else 0
    n_unguarded = int(unguarded.max()) + 1 if n else 0
    refused = ~confirmed & ~attached
    joins = refused & (roots[lo] != roots[hi])
    return groups, GraphSummary(edges=int(len(lo)), confirmed=int(confirmed.sum()),
                                attached=int(attached.sum()), refused=int(joins.sum()),
                                merges_prevented=n_groups - n_unguarded)
