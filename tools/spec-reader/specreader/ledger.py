"""Reading and checking a whole ledger as §12.5 (verification) describes.

Every check raises Fail at the first difference; things a verifier
reports rather than fails (§12.5: missing or orphan caches, a key that
differs from the LEDGER file's) are collected in `notes`.
"""
import re

from . import caches
from .checkpoint import open_checkpoint
from .keys import parse_ledger_file
from .merkle import Frontier, chain_next, genesis, leaf_hash
from .prims import Fail, FormatError, first_difference
from .records import HEADER_LEN, BadFrame, canonical_entry, parse_segment_header, read_frame
from .store import list_blobs

# §3.3: the only names that are part of a ledger.
KINDS = {"checkpoint": r"checkpoint-(\d{20})", "snapshot": r"snapshot-(\d{20})",
         "streams": r"streams-(\d{20})", "merged": r"streams-merged-(\d{20})",
         "nodes": r"nodes-(\d{20})", "segment": r"(\d{10})\.seg"}


def read(path):
    with open(path, "rb") as f:
        return f.read()


class LedgerCheck:
    def __init__(self, root, name, key, read_output=None):
        self.root, self.name, self.key, self.out = root, name, key, read_output
        self.notes = []
        self.checked = {k: 0 for k in ("snapshot", "streams", "merged", "nodes")}

    def blob(self, kind, n):
        if kind == "segment":
            return f"{self.name}/{n:010d}.seg"
        return f"{self.name}/{'streams-merged' if kind == 'merged' else kind}-{n:020d}"

    def run(self):
        blobs = list_blobs(self.root, self.name)
        self.files = {k: {} for k in KINDS}
        for b, path in blobs.items():
            for kind, pat in KINDS.items():
                m = re.fullmatch(pat, b[len(self.name) + 1:])
                if m:
                    self.files[kind][int(m.group(1))] = path
        self.read_ledger_file(blobs)
        self.open_checkpoints()
        self.walk()
        self.after_walk()
        return self.summary()

    # §3.4, §12.5 item 1
    def read_ledger_file(self, blobs):
        blob = f"{self.name}/LEDGER"
        if blob not in blobs:
            raise Fail(blob, None, "missing")
        try:
            self.id, recorded, self.block = parse_ledger_file(read(blobs[blob]), self.name)
        except FormatError as e:
            raise Fail(blob, e.offset, e.what) from None
        if recorded != self.key:  # §3.4: a verifier SHOULD warn
            self.notes.append(f"the given key {self.key.text()} is not the LEDGER file's {recorded.text()}")

    # §10.3, §12.5 item 2
    def open_checkpoints(self):
        self.checkpoints = {}
        if not self.files["checkpoint"]:
            raise Fail(f"{self.name}/", None, "no checkpoint: nothing binds the log to the key (§12.5)")
        origin = f"bi-ledger/{self.name}/{self.id.hex()}"
        for n, path in sorted(self.files["checkpoint"].items()):
            try:
                self.checkpoints[n] = open_checkpoint(read(path), self.key, origin, n)
            except FormatError as e:
                raise Fail(self.blob("checkpoint", n), e.offset, e.what) from None
        self.sizes = sorted(self.checkpoints)
        self.newest = self.sizes[-1]

    # §12.5 items 3-6, and 7 at each checkpoint's size
    def walk(self):
        segs = sorted(self.files["segment"])
        if not segs:
            raise Fail(self.blob("segment", 0), None, "missing: a ledger has segment 0 from its creation")
        for i, k in enumerate(segs):
            if k != i:
                raise Fail(self.blob("segment", i), None, f"missing while segment {k} exists (§3.3)")
        self.segments, self.bytes = len(segs), 0
        self.seq, self.head, self.last_ts = 0, genesis(self.id), -2**63
        self.frontier, self.versions = Frontier(), {}
        self.batches = []  # every batch: (segment, offset, first seq, count, filter)
        self.nodes = []  # nodes of height >= 10 completed since the previous checkpoint
        self.prev_size, self.merged_end, self.reached = None, 0, set()
        for k in segs:
            self.walk_segment(k, read(self.files["segment"][k]), k == segs[-1])

    def walk_segment(self, k, data, last):
        blob = self.blob("segment", k)
        self.bytes += len(data)
        if last and len(data) < HEADER_LEN:
            if data:  # §12.3: a verifier accepts only an empty one
                raise Fail(blob, len(data), "last segment shorter than its header: an interrupted creation or rollover")
            return
        if last and len(data) == HEADER_LEN and not any(data):
            raise Fail(blob, 0, "84 zero bytes: an interrupted rollover (§12.3)")
        try:
            lid, index, first, prev = parse_segment_header(data)
        except FormatError as e:
            raise Fail(blob, e.offset, e.what) from None
        for ok, off, what in ((lid == self.id, 16, "ledger id is not the LEDGER file's"),
                              (index == k, 32, f"segment index {index}, the name says {k}"),
                              (first == self.seq, 40, f"first sequence number {first}, {self.seq} records precede"),
                              (prev == self.head, 48, "previous chain hash is not the chain head so far")):
            if not ok:
                raise Fail(blob, off, what)
        off, blocks = HEADER_LEN, 1
        if k == 0:
            self.boundary(0, 84, 1)  # checkpoint 0: right after segment 0's header
        while off < len(data):
            try:
                frame = read_frame(data, off, self.block - 12)
            except BadFrame as e:
                torn = last and e.reaches_end and self.seq >= self.newest
                raise Fail(blob, e.offset, ("torn last batch (§12.3): " if torn else "") +
                           f"{e.what} (batch from sequence number {self.seq})") from None
            except FormatError as e:
                raise Fail(blob, e.offset, f"record does not decode: {e.what} "
                                           f"(batch from sequence number {self.seq})") from None
            if frame is None:  # only zeros left: unwritten space (§12.2)
                if not last:
                    raise Fail(blob, off, "zeros after the last frame of a segment before the last (§12.2)")
                break
            self.batch(blob, k, frame)
            off, blocks = off + frame.length, blocks + 1
            self.boundary(k, off, blocks)

    def batch(self, blob, k, frame):
        if frame.first_seq != self.seq:
            raise Fail(blob, frame.offset + 12, f"batch first sequence number {frame.first_seq}, expected {self.seq}")
        for r in frame.records:
            if r.ts < self.last_ts:
                raise Fail(blob, frame.offset,
                           f"record {r.seq}: timestamp {r.ts} is before the previous record's {self.last_ts}")
            if r.version != self.versions.get(r.stream, -1) + 1:
                raise Fail(blob, frame.offset, f"record {r.seq}: stream {r.stream!r} version {r.version}, "
                                               f"expected {self.versions.get(r.stream, -1) + 1}")
            leaf = leaf_hash(canonical_entry(r))
            self.head = chain_next(leaf, self.head)
            self.nodes += [(r.seq + 1, h, x) for h, x in self.frontier.add(leaf) if h >= 10]
            self.versions[r.stream], self.last_ts = r.version, r.ts
            if self.out:
                self.out.check(r, blob, frame.offset)
        n = len(frame.records)
        for size in self.sizes:
            if self.seq < size < self.seq + n:
                raise Fail(self.blob("checkpoint", size), None,
                           f"size falls inside the batch at {blob} offset {frame.offset} (not a batch boundary)")
        self.batches.append((k, frame.offset, self.seq, n, caches.bloom([r.stream for r in frame.records])))
        self.seq += n

    def boundary(self, k, length, blocks):
        """§12.5 item 7, once the walk reaches a checkpoint's size."""
        n = self.seq
        if n not in self.checkpoints:
            return
        cp, blob = self.checkpoints[n], self.blob("checkpoint", n)
        self.reached.add(n)
        lines = cp.body.split(b"\n")
        if cp.root != self.frontier.root():
            raise Fail(blob, len(lines[0]) + len(lines[1]) + 2,
                       f"root {cp.root.hex()}, recomputed {self.frontier.root().hex()}")
        if cp.chain != self.head:
            raise Fail(blob, sum(len(x) + 1 for x in lines[:3]),
                       f"chain head {cp.chain.hex()}, recomputed {self.head.hex()}")
        frm = self.prev_size if self.prev_size is not None else 0
        positions = [(k, length, blocks)]
        if k + 1 in self.files["segment"]:  # §11: the start of the next segment is equivalent
            positions.append((k + 1, HEADER_LEN, 1))
        snaps = [caches.snapshot(self.id, n, self.head, self.last_ts, p, self.frontier.hashes(), self.versions)
                 for p in positions]
        self.compare("snapshot", n, snaps)
        if cp.snapshot is not None:  # §10.1: the snapshot line signs the snapshot's closing digest
            stored = self.files["snapshot"].get(n)
            digests = [read(stored)[-32:]] if stored is not None else [e.body()[-32:] for e in snaps]
            if cp.snapshot not in digests:
                raise Fail(blob, len(cp.body) - len(lines[-2]) - 1,
                           f"snapshot line {cp.snapshot.hex()}, the snapshot's digest is {digests[0].hex()}")
        since = [(b[0], b[1], b[3], b[4]) for b in self.batches if b[2] >= frm]
        if n > frm:
            self.compare("streams", n, [caches.stream_index(self.id, frm, n, since)], missing="stream index")
        if self.nodes:
            self.compare("nodes", n, [caches.node_cache(self.id, frm, n, self.nodes)], missing="node cache")
        self.check_merged(n)
        self.prev_size, self.nodes = n, []

    def compare(self, kind, n, expected, missing=None):
        """A cache must equal one of its re-derived encodings byte for byte."""
        path = self.files[kind].get(n)
        if path is None:
            if missing:  # §12.5: reported, not failed
                self.notes.append(f"checkpoint {n} has no {missing}")
            return
        got = read(path)
        if any(got == e.body() for e in expected):
            self.checked[kind] += 1
            return
        e = expected[0]
        if kind == "snapshot":  # name the difference against the position it states
            e = next((x for x in expected if got[76:100] == x.body()[76:100]), e)
        want = e.body()
        off = first_difference(got, want)
        raise Fail(self.blob(kind, n), off, f"differs from the one re-derived from the log in its "
                   f"{e.field_at(off)} (stored {len(got)} bytes, expected {len(want)})")

    def check_merged(self, n):
        """§11.3.1, §12.5 item 7: a merged stream index of this checkpoint's size."""
        path = self.files["merged"].get(n)
        if path is None:
            return
        got = read(path)
        frm = int.from_bytes(got[28:36], "little") if len(got) >= 36 else -1
        start = self.merged_end  # merged indexes never overlap
        if not (frm == 0 or frm in self.checkpoints) or not start <= frm < n:
            raise Fail(self.blob("merged", n), 28, f"starts at {frm}: not 0 or a checkpoint from {start} to {n}")
        bs = [(b[0], b[1], b[3], b[4]) for b in self.batches if frm <= b[2] < n]
        self.compare("merged", n, [caches.stream_index(self.id, frm, n, bs)])
        self.merged_end = n

    # §12.5 items 7 (newest snapshot), 8 and the reports
    def after_walk(self):
        for n in self.sizes:
            if n > self.seq:
                raise Fail(self.blob("checkpoint", n), None, f"covers {n} records, the log holds {self.seq} (§12.3)")
            if n not in self.reached:
                raise Fail(self.blob("checkpoint", n), None, "the walk never stood at its size (§12.5 item 7)")
        if self.newest not in self.files["snapshot"]:
            raise Fail(self.blob("snapshot", self.newest), None,
                       "missing: the newest checkpoint's snapshot must exist (§11.1)")
        for kind in ("snapshot", "streams", "nodes", "merged"):
            for n in sorted(set(self.files[kind]) - set(self.checkpoints)):
                if kind == "merged" and n <= self.newest:
                    raise Fail(self.blob(kind, n), None, "no checkpoint of this size at or below the newest (§11.3.1)")
                self.notes.append(f"{self.blob(kind, n)} has no checkpoint of its size")
        if self.out:
            self.out.finish(self.seq)

    def summary(self):
        c = self.checked
        text = (f"OK {self.name}: {self.seq} records, {self.segments} segments, {self.bytes} bytes; "
                f"{len(self.checkpoints)} checkpoints (signature, root and chain head); byte-equal to their "
                f"re-derivation: {c['snapshot']} snapshots, {c['streams']} stream indexes, "
                f"{c['merged']} merged stream indexes, {c['nodes']} node caches; "
                f"{self.seq - self.newest} records after the newest checkpoint; "
                f"chain head {self.head.hex()}, root {self.frontier.root().hex()}")
        if self.out:
            text += f"; {self.out.count} lines of read output match field by field"
        return text
