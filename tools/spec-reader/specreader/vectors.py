"""§13: rebuild every test vector from the document's description of the
vector ledger (§13.1), compare byte for byte, and read the vectors back.

Every `<!-- vector: NAME -->` block of the document must parse and be
checked here, and every vector checked here must be in the document.
"""
import json
import os
import re
import struct
import tempfile

from . import caches, ed25519
from .checkpoint import EM_DASH, body_text, open_checkpoint
from .keys import DEFAULT_BLOCK, ledger_file_text, parse_ledger_file, parse_signing_key, parse_verifier_key
from .ledger import LedgerCheck
from .merkle import (CHAIN_TAG, EMPTY_ROOT, GENESIS_TAG, Frontier, chain_next, consistency_proof, genesis,
                     inclusion_path, leaf_hash, mth, node, node_count, verify_consistency, verify_inclusion)
from .prims import Cursor, Fail, FormatError, b64encode, crc32c, first_difference, sha256, varint
from .records import (Record, canonical_entry, decode_entry, encode_frame, parse_segment_header, read_frame,
                      segment_header)
from .store import blob_path

# §13.1: the vector ledger, as the document describes it in prose and tables.
NAME = "vectors"
LEDGER_ID = bytes(range(16))
SEED = b"\x01" * 32
KEY_NAME = "bi-ledger/vectors"
JSON, PDF, OCTETS = "application/json", "application/pdf", "application/octet-stream"
RECORDS = [
    Record(0, 1767225600000000, "decision-1", 0, "DecisionQueued", 1, JSON,
           [("actor", "ceo"), ("correlation-id", "c-42")], b'{"title":"Expand to EU"}'),
    Record(1, 1767225600001500, "decision-1", 1, "VoteCast", 2, JSON, [], b'{"agent":"cfo","vote":"approve"}'),
    Record(2, 1767225601000250, "decision-1-files", 0, "AttachmentAdded", 1, PDF, [], b"%PDF-1.7\n"),
    Record(3, 1767225601000250, "decision-1-files", 1, "AttachmentAdded", 1, OCTETS, [], bytes([0, 1, 0xFE, 0xFF])),
]
BATCHES = [(1767225600000000, RECORDS[:2]), (1767225601000000, RECORDS[2:])]  # (base timestamp, records)
CHECKPOINT_TIMES = {0: "2025-12-31T23:59:55.123456Z", 2: "2026-01-01T00:00:00.500000Z",
                    4: "2026-01-01T00:00:02.000007Z"}


class Vectors:
    def __init__(self, spec, path):
        self.spec, self.path = spec, path
        self.blocks, self.lines, self.used = {}, {}, set()
        for m in re.finditer(r"^<!--\s*vector:\s*(.*?)\s*-->$", spec, re.M):
            self.parse_block(m)

    def where(self, name):
        return f"{self.path} vector {name} (line {self.lines.get(name, '?')})"

    def parse_block(self, m):
        name, line = m.group(1), self.spec.count("\n", 0, m.start()) + 1
        fence = re.compile(r"\n```(hex|text|json)\n(.*?)^```", re.S | re.M).match(self.spec, m.end())
        if not re.fullmatch(r"[a-z0-9-]+", name) or name in self.blocks or not fence:
            raise Fail(f"{self.path} line {line}", None, f"vector marker {name!r}: bad or duplicate name, "
                       "or not followed by a hex, text or json code block")
        kind, body = fence.groups()
        if kind == "hex":  # §13.1: white space and '#' comments are not part of the bytes
            digits = re.sub(r"\s+", "", re.sub(r"#.*", "", body))
            if not re.fullmatch(r"(?:[0-9a-f]{2})*", digits):
                raise Fail(f"{self.path} line {line}", None, f"vector {name}: not an even number of hex digits")
            value = bytes.fromhex(digits)
        elif kind == "text":  # its lines, each followed by LF
            value = body.encode("utf-8")
        else:
            try:
                value = json.loads(body)
            except ValueError as e:
                raise Fail(f"{self.path} line {line}", None, f"vector {name}: not JSON ({e})") from None
        self.blocks[name], self.lines[name] = value, line

    def get(self, name):
        if name not in self.blocks:
            raise Fail(self.path, None, f"vector {name} is missing from the document")
        self.used.add(name)
        return self.blocks[name]

    def same(self, name, rebuilt):
        """The vector must equal the bytes rebuilt from the description."""
        got = self.get(name)
        if got != rebuilt:
            off = first_difference(got, rebuilt) if isinstance(got, bytes) else None
            raise Fail(self.where(name), off, f"differs from the rebuilt value "
                       f"({len(got) if isinstance(got, bytes) else 'JSON'} vs {len(rebuilt)} bytes)")

    def expect(self, ok, name, what):
        if not ok:
            raise Fail(self.where(name), None, what)

    def reads(self, name, fn):
        """Runs a reader over the vector; a FormatError is a failure of it."""
        try:
            return fn(self.get(name))
        except (FormatError, ValueError) as e:
            off = getattr(e, "offset", None)
            raise Fail(self.where(name), off, f"does not read back: {getattr(e, 'what', e)}") from None


def check_primitives(path):
    """Examples given in the text outside §13 (§2.2, §2.4, §9.1, §11.3, §11.4)."""
    def expect(ok, what):
        if not ok:
            raise Fail(path, None, f"primitive example of the document fails: {what}")

    expect(crc32c(b"123456789") == 0xE3069283, "§2.4 CRC-32C check value")
    for v, h in [(0, "00"), (127, "7f"), (128, "8001"), (250, "fa01"), (1500, "dc0b"), (2**64 - 1, "ff" * 9 + "01")]:
        expect(varint(v).hex() == h and Cursor(bytes.fromhex(h)).varint("v") == v, f"§2.2 varint {v}")
    for bad in ["8000", "ff" * 9 + "02", "ff" * 10 + "01", "80"]:
        try:
            Cursor(bytes.fromhex(bad)).varint("v")
            expect(False, f"§2.2 varint {bad} must be rejected")
        except FormatError:
            pass
    expect(EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "§9.1 empty root")
    expect(caches.fnv1a64(b"a") == 0xAF63DC4C8601EC8C, "§11.3 FNV-1a of 'a'")
    f, order = Frontier(), []
    for i in range(4096):
        order += [(h, (i + 1) // (1 << h) - 1) for h, _ in f.add(leaf_hash(b"")) if h >= 10]
    expect(order == [(10, 0), (10, 1), (11, 0), (10, 2), (10, 3), (11, 1), (12, 0)] and node_count(0, 4096) == 7,
           "§11.4 node order of the cache from 0 to 4096")


def check_vectors(spec, path):
    """Returns the report lines; raises Fail at the first difference."""
    check_primitives(path)
    v = Vectors(spec, path)
    if not v.blocks:
        raise Fail(path, None, "no vector blocks found")

    # §13.2 keys and the LEDGER file
    key_name, seed, key = v.reads("signing-key", lambda b: parse_signing_key(b.decode()))
    v.expect((key_name, seed) == (KEY_NAME, SEED), "signing-key", "name or seed is not the one of §13.1")
    v.same("signing-key", f"PRIVATE+KEY+{KEY_NAME}+{key.kid.hex()}+{b64encode(bytes([1]) + SEED)}\n".encode())
    v.same("verifier-key", (key.text() + "\n").encode())
    v.expect(v.reads("verifier-key", lambda b: parse_verifier_key(b.decode())) == key, "verifier-key",
             "reads back as another key")
    for name, block in (("ledger-file", DEFAULT_BLOCK), ("ledger-file-blocks", 65536)):
        v.same(name, ledger_file_text(NAME, LEDGER_ID, key, block).encode())
        got = v.reads(name, lambda b: parse_ledger_file(b, NAME))
        v.expect(got == (LEDGER_ID, key, block), name, f"reads back as {got}")
    v.same("chain-tag", CHAIN_TAG)
    v.same("genesis-tag", GENESIS_TAG)
    v.same("genesis", genesis(LEDGER_ID))

    # §13.3 the segment
    v.same("segment-header", segment_header(LEDGER_ID, 0, 0, genesis(LEDGER_ID)))
    v.expect(v.reads("segment-header", parse_segment_header) == (LEDGER_ID, 0, 0, genesis(LEDGER_ID)),
             "segment-header", "does not read back")
    seg, off = v.get("segment-header"), 84
    for i, (base, recs) in enumerate(BATCHES):
        v.same(f"batch-{i}", encode_frame(recs[0].seq, base, recs))
        seg += v.get(f"batch-{i}")
    for i, (base, recs) in enumerate(BATCHES):
        frame = v.reads(f"batch-{i}", lambda _: read_frame(seg, off, DEFAULT_BLOCK - 12))
        v.expect(frame.records == recs and frame.base_ts == base, f"batch-{i}", "decodes to other records")
        off += frame.length
    v.expect(len(seg) == 358, "batch-1", f"the segment is {len(seg)} bytes, §13.3 says 358")

    # §13.4 entries, leaves, chain; §13.5 roots
    leaves, chains, head = [], [], genesis(LEDGER_ID)
    for r in RECORDS:
        v.same(f"entry-{r.seq}", canonical_entry(r))
        v.expect(v.reads(f"entry-{r.seq}", decode_entry) == r, f"entry-{r.seq}", "decodes to another record")
        leaves.append(leaf_hash(canonical_entry(r)))
        v.same(f"leaf-{r.seq}", leaves[-1])
        head = chain_next(leaves[-1], head)
        chains.append(head)
        v.same(f"chain-{r.seq}", head)
    for n in (0, 2, 4):
        v.same(f"root-{n}", mth(leaves[:n]))

    # §13.6 snapshots and stream indexes
    positions = {0: (0, 84, 1), 2: (0, 251, 2), 4: (0, 358, 3)}
    snapshots = {}
    for n, pos in positions.items():
        f = Frontier()
        for leaf in leaves[:n]:
            f.add(leaf)
        versions = {r.stream: r.version for r in RECORDS[:n]}
        last_ts = RECORDS[n - 1].ts if n else -2**63
        snapshots[n] = caches.snapshot(LEDGER_ID, n, chains[n - 1] if n else genesis(LEDGER_ID),
                                       last_ts, pos, f.hashes(), versions).body()
        v.same(f"snapshot-{n}", snapshots[n])

    # §13.6 checkpoints (Ed25519 is deterministic: re-signing gives the same bytes)
    origin = f"bi-ledger/{NAME}/{LEDGER_ID.hex()}"
    for n, time in CHECKPOINT_TIMES.items():
        head = chains[n - 1] if n else genesis(LEDGER_ID)
        # The snapshot line: the SHA-256 of the snapshot's bytes before its closing digest.
        body = body_text(origin, n, mth(leaves[:n]), head, time, sha256(snapshots[n][:-32])).encode()
        sig_line = f"\n{EM_DASH} {KEY_NAME} {b64encode(key.kid + ed25519.sign(SEED, body))}\n"
        v.same(f"checkpoint-{n}", body + sig_line.encode())
        cp = v.reads(f"checkpoint-{n}", lambda b: open_checkpoint(b, key, origin, n))
        v.expect((cp.root, cp.chain, cp.time, cp.snapshot) == (mth(leaves[:n]), head, time, snapshots[n][-32:]),
                 f"checkpoint-{n}", "reads back wrong")
        forged = bytearray(v.get(f"checkpoint-{n}"))
        forged[len(body) + 40] ^= 0x01  # inside the signature's base64: strict verification must refuse it
        try:
            open_checkpoint(bytes(forged), key, origin, n)
            v.expect(False, f"checkpoint-{n}", "a changed signature still verifies")
        except FormatError:
            pass

    for (frm, to), off in (((0, 2), 84), ((2, 4), 251)):
        streams = [r.stream for r in RECORDS[frm:to]]
        batch = (0, off, to - frm, caches.bloom(streams))
        v.same(f"streams-{to}", caches.stream_index(LEDGER_ID, frm, to, [batch]).body())

    # §13.7 proofs
    ip = v.get("inclusion-proof")
    entry = bytes.fromhex(ip["entry"])
    v.expect(entry == canonical_entry(RECORDS[0]) and decode_entry(entry).seq == ip["seq"] == 0 and ip["size"] == 4,
             "inclusion-proof", "entry, seq or size is not record 0 in the tree of size 4")
    v.same("inclusion-proof", dict(ip, proof=[h.hex() for h in inclusion_path(0, leaves)]))
    v.expect(verify_inclusion(0, 4, leaf_hash(entry), [bytes.fromhex(h) for h in ip["proof"]], mth(leaves)),
             "inclusion-proof", "does not verify against root-4")
    for i in range(4):  # every path of the tree verifies, and only where it belongs
        path_ = inclusion_path(i, leaves)
        v.expect(verify_inclusion(i, 4, leaves[i], path_, mth(leaves)) and
                 not verify_inclusion(i ^ 1, 4, leaves[i], path_, mth(leaves)), "inclusion-proof", f"path of {i}")
    cp_ = v.get("consistency-proof")
    proof = [bytes.fromhex(h) for h in cp_["proof"]]
    v.same("consistency-proof", dict(old_size=2, new_size=4, proof=[h.hex() for h in consistency_proof(2, leaves)]))
    v.expect(verify_consistency(2, 4, mth(leaves[:2]), mth(leaves), proof) and
             not verify_consistency(2, 4, mth(leaves[:2]), mth(leaves), proof * 2), "consistency-proof",
             "does not verify, or verifies with an extra hash")

    # §13.9 the node cache of entries u64le(i), from 1000 to 2048
    f, nodes = Frontier(), []
    for i in range(2048):
        nodes += [(i + 1, h, x) for h, x in f.add(leaf_hash(struct.pack("<Q", i))) if h >= 10 and i + 1 > 1000]
    v.same("node-cache", caches.node_cache(LEDGER_ID, 1000, 2048, nodes).body())
    v.expect(len(nodes) == node_count(1000, 2048) == 3 and nodes[-1][2] == node(nodes[0][2], nodes[1][2]),
             "node-cache", "node count or order")

    summary = check_vector_ledger(v, key, chains[-1], mth(leaves))
    unchecked = sorted(set(v.blocks) - v.used)
    if unchecked:
        raise Fail(path, None, f"vectors not checked by this reader: {', '.join(unchecked)}")
    return [f"checked {len(v.used)} vectors of {path}: {', '.join(sorted(v.used))}",
            f"vector ledger (§13.8) read as a ledger: {summary}"]


def check_vector_ledger(v, key, head, root):
    """§13.8: the vectors as blobs, per the table of the document, form a
    ledger that verifies: 4 records, 1 segment, 358 bytes, 3 checkpoints."""
    section = v.spec.split("### 13.8", 1)[-1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(vectors/[^`]+)` \| (.+?) \|$", section, re.M)
    if not rows:
        raise Fail(v.path, None, "§13.8: no table of the vector ledger's blobs")
    with tempfile.TemporaryDirectory() as root_dir:
        for blob, contents in rows:
            path = blob_path(root_dir, blob)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                out.write(b"".join(v.get(n) for n in re.findall(r"`([a-z0-9-]+)`", contents)))
        check = LedgerCheck(root_dir, NAME, key)
        summary = check.run()
    got = (check.seq, check.segments, check.bytes, len(check.checkpoints), check.head, check.frontier.root(),
           check.seq - check.newest, check.notes)
    if got != (4, 1, 358, 3, head, root, 0, []):
        raise Fail(v.path, None, f"§13.8: the vector ledger reads as {got}")
    return summary
