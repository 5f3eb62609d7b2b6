"""Vectorised union-find over integer *atoms* (one atom = one channel position of one producer)."""
from __future__ import annotations

import numpy as np


class DisjointSets:
    """Union-find whose operations take whole numpy arrays of atoms at once.

    Example:
        >>> ds = DisjointSets()
        >>> a = ds.new(4)           # atoms 0..3
        >>> ds.union(a[:2], a[2:])  # 0~2, 1~3
        >>> ds.find(a).tolist()
        [0, 1, 0, 1]
    """

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int) -> np.ndarray:
        """Allocate ``n`` fresh singleton atoms and return their ids."""
        start = len(self._parent)
        self._parent = np.concatenate([self._parent, np.arange(start, start + n, dtype=np.int64)])
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, atoms: np.ndarray) -> np.ndarray:
        """Roots of ``atoms`` (any shape); compresses the paths it walks."""
        atoms = np.asarray(atoms, dtype=np.int64)
        roots = self._parent[atoms]
        while True:
            nxt = self._parent[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        self._parent[atoms] = roots
        return roots

    def roots(self) -> np.ndarray:
        """The root of every atom, indexed by atom (compresses every path; the array is the
        structure's own, so do not change it while the structure is still in use)."""
        while True:
            nxt = self._parent[self._parent]
            if np.array_equal(nxt, self._parent):
                return self._parent
            self._parent = nxt

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join ``a[i]`` with ``b[i]`` for every i (arrays of equal shape; negative ids are skipped)."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        keep = (a >= 0) & (b >= 0)
        a, b = a[keep], b[keep]
        if a.size == 0:
            return
        differ = a != b
        a, b = a[differ], b[differ]
        if a.size == 0:
            return
        # One int64 key per pair: 1-D unique is far faster than unique over rows.
        n = np.int64(len(self._parent))
        keys = np.unique(a * n + b)
        a, b = keys // n, keys % n
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            lo = np.minimum(ra[differ], rb[differ])
            hi = np.maximum(ra[differ], rb[differ])
            # Several pairs may write the same ``hi``; the loop repeats until all are joined.
            np.minimum.at(self._parent, hi, lo)
            a, b = a[differ], b[differ]

    def union_all(self, atoms: np.ndarray) -> int:
        """Join every non-negative atom of ``atoms`` into one set and return its root (-1 if none)."""
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        atoms = np.unique(atoms[atoms >= 0])
        if atoms.size == 0:
            return -1
        self.union(np.full_like(atoms, atoms[0]), atoms)
        return int(self.find(atoms[:1])[0])
