"""Exact duplicate detection over streams of any length in bounded memory.

A single pass cannot be exact in constant memory, so :class:`DuplicateFinder` uses two:

1. Every key's 64-bit hash goes through a Bloom filter of fixed size (16 MiB by default:
   2^27 bits, k = 4 hash functions from double hashing ``h1 + i * h2``). A key whose bits are
   all set already is a *candidate* duplicate. With n keys in m bits, a fresh key is a false
   candidate with probability about ``(1 - exp(-k n / m)) ** k``: ~1e-6 at 1M keys, ~0.4% at
   10M. Bloom updates run vectorized with numpy, one chunk of keys at a time.
2. Only when there are candidates, a second pass over the keys keeps, for each candidate hash,
   the first key seen and compares later keys with it byte for byte: exact, and its memory is
   proportional to the number of candidates, not to the stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

DEFAULT_BITS = 1 << 27
DEFAULT_HASHES = 4


class DuplicateFinder:
    def __init__(self, bits: int = DEFAULT_BITS, hashes: int = DEFAULT_HASHES):
        if bits & (bits - 1):
            raise ValueError("bits must be a power of two")
        self._mask = np.uint64(bits - 1)
        self._bits = np.zeros(bits // 8, dtype=np.uint8)
        self._hashes = hashes
        self.candidates: dict[int, int] = {}
        """position -> key hash, for keys that may repeat an earlier key."""

    def add_chunk(self, positions, key_hashes) -> list[int]:
        """Add a chunk of keys (their ``hash()`` values, a list or int64 array) seen at
        ``positions``; returns the positions flagged as candidate duplicates (seen before, or
        repeated in the chunk)."""
        if len(key_hashes) == 0:
            return []
        h = np.asarray(key_hashes, dtype=np.int64).view(np.uint64)
        h1 = h & np.uint64(0xFFFFFFFF)
        h2 = (h >> np.uint64(32)) | np.uint64(1)
        seen = np.ones(len(h), dtype=bool)
        index = []
        for i in range(self._hashes):
            idx = (h1 + np.uint64(i) * h2) & self._mask
            byte, bit = idx >> np.uint64(3), (idx & np.uint64(7)).astype(np.uint8)
            seen &= (self._bits[byte] >> bit) & np.uint8(1) == 1
            index.append((byte, np.left_shift(np.uint8(1), bit)))
        # repeats inside the chunk: every occurrence after the first of an equal hash
        order = np.argsort(h, kind="stable")
        repeat = np.zeros(len(h), dtype=bool)
        repeat[order[1:]] = h[order[1:]] == h[order[:-1]]
        for byte, mask in index:
            np.bitwise_or.at(self._bits, byte, mask)
        flagged = np.flatnonzero(seen | repeat)
        out = []
        for j in flagged.tolist():
            position = int(positions[j])
            self.candidates[position] = int(key_hashes[j])
            out.append(position)
        return out

    def resolve(self, keys: Iterable[tuple[int, Hashable]]) -> dict[int, int]:
        """Second pass: given every ``(position, key)`` again in the same order, return
        ``{duplicate position: position of the first equal key}`` (exact)."""
        if not self.candidates:
            return {}
        wanted = set(self.candidates.values())
        first: dict[int, list[tuple[Hashable, int]]] = {}
        duplicates: dict[int, int] = {}
        for position, key in keys:
            h = hash(key)
            if h not in wanted:
                continue
            bucket = first.setdefault(h, [])
            for earlier_key, earlier_position in bucket:
                if earlier_key == key:
                    duplicates[position] = earlier_position
                    break
            else:
                bucket.append((key, position))
        return duplicates
