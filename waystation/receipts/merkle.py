"""RFC 6962 Merkle trees: hashes, roots, inclusion and consistency proofs, and their checks.

Pure functions over a `Node` getter, so the same code serves the tree stored in SQLite
(tree.py), a tree held in memory, and an auditor's offline check with no tree at all.
Proof generation follows RFC 6962 section 2.1 (PATH and SUBPROOF); the checks follow RFC 9162
sections 2.1.3.2 and 2.1.4.2, the algorithms Certificate Transparency and Go's sumdb verify with.

Every subtree a proof needs is aligned (it starts at a multiple of its own power-of-two size), so
it is a node the tree stores: a proof costs O(log n) node reads, however long the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

# (level, index) -> the hash of the perfect subtree over leaves [index << level, (index + 1) << level)
Node = Callable[[int, int], bytes]
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not check out, or one asked for sizes the tree cannot have."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than `size` (size >= 2): where RFC 6962 splits a tree."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_root(node: Node, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from stored nodes: O(log n) reads."""
    size = end - start
    if size <= 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0:  # a perfect subtree: one stored node
        level = size.bit_length() - 1
        if start % size:
            raise ProofError(f"subtree [{start}, {end}) is not aligned")
        return node(level, start >> level)
    k = _split(size)
    return node_hash(subtree_root(node, start, start + k), subtree_root(node, start + k, end))


def inclusion_proof(node: Node, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]), leaf first (RFC 6962 2.1.1)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_root(node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(node, start, start + k))
            start += k
    return proof[::-1]


def consistency_proof(node: Node, old_size: int, size: int) -> list[bytes]:
    """PROOF(old_size, D[0:size]) (RFC 6962 2.1.2): empty when either size is 0 or they are equal."""
    if not 0 <= old_size <= size:
        raise ProofError(f"no consistency from {old_size} to {size}")
    if old_size in (0, size):
        return []
    proof: list[bytes] = []
    start, end, whole = 0, size, True  # SUBPROOF(m, D[start:end], b), unrolled
    m = old_size
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtree_root(node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(node, start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        proof.append(subtree_root(node, start, end))
    return proof[::-1]


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """The root that `proof` makes of `leaf` at `index` in a tree of `size` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    fn, sn, root = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            root = node_hash(sibling, root)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            root = node_hash(root, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    return root


def check_consistency(old_size: int, size: int, old_root: bytes, root: bytes, proof: list[bytes]) -> None:
    """Raise ProofError unless `proof` shows the tree (old_size, old_root) is a prefix of (size,
    root) (RFC 9162 2.1.4.2)."""
    if not 0 <= old_size <= size:
        raise ProofError(f"a tree of {size} cannot extend one of {old_size}")
    if old_size == size:
        if proof or old_root != root:
            raise ProofError("equal sizes with different roots")
        return
    if old_size == 0:
        return  # every tree extends the empty one
    if old_size & (old_size - 1) == 0:
        proof = [old_root, *proof]
    if not proof:
        raise ProofError("the consistency proof is empty")
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    first = second = proof[0]
    for step in proof[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            first, second = node_hash(step, first), node_hash(step, second)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            second = node_hash(second, step)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or first != old_root or second != root:
        raise ProofError("the consistency proof does not match the roots")


def root_of(leaves: list[bytes]) -> bytes:
    """MTH of these leaf hashes, held in memory (a block's worth)."""
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


class CompactRange:
    """The roots of the perfect subtrees of the leaves seen so far, left to right: a tree's root
    at any size in O(log n) memory, for a pass over every leaf."""

    def __init__(self, size: int = 0, peaks: list[bytes] | None = None) -> None:
        """Empty, or the range of a tree of `size` leaves given its perfect subtrees' roots, left
        to right (one per bit set in `size`, largest first)."""
        levels = [bit for bit in reversed(range(size.bit_length())) if size >> bit & 1]
        if len(levels) != len(peaks or []):
            raise ProofError(f"a tree of {size} has {len(levels)} perfect subtrees")
        self.size = size
        self._peaks: list[tuple[int, bytes]] = list(zip(levels, peaks or [], strict=True))

    @staticmethod
    def peak_nodes(size: int) -> list[tuple[int, int]]:
        """The (level, index) of the perfect subtrees a tree of `size` leaves splits into."""
        nodes, start = [], 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                nodes.append((level, start >> level))
                start += 1 << level
        return nodes

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; the perfect subtrees it completes, (level, index, hash), itself first."""
        level, digest, index = 0, leaf, self.size
        made = [(0, index, leaf)]
        while self._peaks and self._peaks[-1][0] == level:
            digest = node_hash(self._peaks.pop()[1], digest)
            level, index = level + 1, index >> 1
            made.append((level, index, digest))
        self._peaks.append((level, digest))
        self.size += 1
        return made

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        root = self._peaks[-1][1]
        for _, peak in reversed(self._peaks[:-1]):
            root = node_hash(peak, root)
        return root
