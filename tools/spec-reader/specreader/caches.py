"""§11 snapshots, §11.3 stream indexes, §11.4 node caches.

None of them is evidence: a verifier re-derives each from the log and
requires the stored blob to be exactly equal (§12.5), so this module only
encodes. The encoders keep field names, so that a difference can be named.
"""
from .prims import bytes_v, i64, sha256, u16, u32, u64, varint


class Encoded:
    """Bytes built field by field, ending in the SHA-256 of what precedes."""

    def __init__(self):
        self.fields = []  # [(name, bytes)]

    def add(self, name, b):
        self.fields.append((name, b))
        return self

    def seal(self):
        self.add("SHA-256 of all preceding bytes", sha256(self.body()))
        return self

    def body(self):
        return b"".join(b for _, b in self.fields)

    def field_at(self, offset):
        at = 0
        for name, b in self.fields:
            if offset < at + len(b):
                return name
            at += len(b)
        return "end of blob"


def _head(magic, ledger_id):
    return Encoded().add("magic", magic).add("version", u16(1)).add("reserved", u16(0)).add("ledger id", ledger_id)


def snapshot(ledger_id, size, head, last_ts, position, frontier, streams):
    """§11: `position` is (segment index, segment length, segment blocks);
    `streams` maps stream id to its last version."""
    e = _head(b"BILSNAP1", ledger_id).add("size", u64(size)).add("chain head", head)
    e.add("last timestamp", i64(last_ts))
    for name, v in zip(("segment index", "segment length", "segment blocks"), position):
        e.add(name, u64(v))
    e.add("frontier length", u32(len(frontier)))
    for i, h in enumerate(frontier):
        e.add(f"frontier node {i}", h)
    e.add("stream count", u64(len(streams)))
    for s in sorted(streams, key=str.encode):  # §2.3 bytewise order
        e.add(f"stream {s!r}", bytes_v(s) + varint(streams[s]))
    return e.seal()


# §11.3 Bloom filters: FNV-1a 64, double hashing, 7 probes, ceil(10n/8) bytes.
MASK64 = 2**64 - 1


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & MASK64
    return h


def bloom(streams):
    """The filter of a batch whose records are of `streams` (one per record)."""
    size = (10 * len(streams) + 7) // 8
    bits, f = 8 * size, bytearray(size)
    for s in streams:
        h1 = fnv1a64(s.encode())
        h2 = (((h1 << 32) | (h1 >> 32)) & MASK64) | 1
        for i in range(7):
            b = ((h1 + i * h2) & MASK64) % bits
            f[b // 8] |= 1 << (b % 8)
    return bytes(f)


def stream_index(ledger_id, frm, to, batches):
    """§11.3 (and §11.3.1, same bytes): `batches` is [(segment, offset,
    record count, filter)], the filter from `bloom`."""
    e = _head(b"BILSIDX1", ledger_id).add("from", u64(frm)).add("to", u64(to))
    e.add("batch count", u64(len(batches)))
    for seg, off, count, f in batches:
        e.add(f"batch at segment {seg} offset {off}",
              varint(seg) + varint(off) + varint(count) + varint(len(f)) + f)
    return e.seal()


def node_cache(ledger_id, frm, to, nodes):
    """§11.4: `nodes` is [(completed at size e, height h, root)] in (e, h) order."""
    e = _head(b"BILNODE1", ledger_id).add("from", u64(frm)).add("to", u64(to))
    for size, h, root in nodes:
        e.add(f"node ({h}, {size // (1 << h) - 1})", root)
    return e.seal()
