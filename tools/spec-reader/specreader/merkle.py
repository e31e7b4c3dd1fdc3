"""§8 the hash chain and §9 the RFC 9162 Merkle tree and proofs."""
from .prims import sha256

# §8: ASCII tags zero-padded to 32 bytes, so that tag || leaf is one SHA-256 block.
CHAIN_TAG = b"bi-ledger chain v1".ljust(32, b"\0")
GENESIS_TAG = b"bi-ledger genesis v1".ljust(32, b"\0")
EMPTY_ROOT = sha256(b"")


def genesis(ledger_id):
    return sha256(GENESIS_TAG, ledger_id)


def chain_next(leaf, prev):
    return sha256(CHAIN_TAG, leaf, prev)


def leaf_hash(entry):
    return sha256(b"\x00", entry)


def node(left, right):
    return sha256(b"\x01", left, right)


def _split(n):
    """RFC 9162: the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    """MTH over leaf hashes (already hashed with 0x00)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node(mth(leaves[:k]), mth(leaves[k:]))


class Frontier:
    """The compact tree of §11: roots of the perfect subtrees, largest first."""

    def __init__(self):
        self.nodes = []  # [(height, hash)]
        self.size = 0

    def add(self, leaf):
        """Appends a leaf; returns the nodes completed by it as [(height, hash)],
        in increasing height (the order of §11.4)."""
        self.size += 1
        height, h, done = 0, leaf, []
        while self.nodes and self.nodes[-1][0] == height:
            h = node(self.nodes.pop()[1], h)
            height += 1
            done.append((height, h))
        self.nodes.append((height, h))
        return done

    def hashes(self):
        return [h for _, h in self.nodes]

    def root(self):
        # §11: fold from the right.
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node(h, r)
        return r


def node_count(frm, to):
    """§11.4: nodes of height >= 10 completed at sizes in (frm, to]."""
    return sum((to >> h) - (frm >> h) for h in range(10, 64))


# ---- §9.2 proofs (RFC 9162 §2.1.3 and §2.1.4)

def inclusion_path(m, leaves):
    """PATH(m, D[n])."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return inclusion_path(m, leaves[:k]) + [mth(leaves[k:])]
    return inclusion_path(m - k, leaves[k:]) + [mth(leaves[:k])]


def consistency_proof(m, leaves):
    """PROOF(m, D[n]) with the extensions of §9.2 (empty for m = 0 or m = n)."""
    def subproof(m, d, b):
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = _split(n)
        if m <= k:
            return subproof(m, d[:k], b) + [mth(d[k:])]
        return subproof(m - k, d[k:], False) + [mth(d[:k])]

    return [] if m in (0, len(leaves)) else subproof(m, leaves, True)


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 §2.1.3.2; every hash must be consumed."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(m, n, old_root, new_root, proof):
    """RFC 9162 §2.1.4.2 with the §9.2 extensions for m = 0 and m = n."""
    if m > n:
        return False
    if m == 0:
        return not proof and old_root == EMPTY_ROOT
    if m == n:
        return not proof and old_root == new_root
    if not proof:
        return False
    proof = ([old_root] if m & (m - 1) == 0 else []) + list(proof)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
