"""§4.1 segment headers, §5 batch frames, §6 records, §7 canonical entries."""
import struct
from dataclasses import dataclass, field

from .prims import Cursor, FormatError, bytes_u32, bytes_v, crc32c, i64, u8, u16, u32, u64, varint

HEADER_LEN = 84
MAX_U64 = 2**64 - 1
MAX_I64 = 2**63 - 1
# §6.1 content type codes; 0 means spelled out, 4..255 are reserved.
CONTENT_TYPES = {1: "application/json", 2: "application/octet-stream", 3: "text/plain; charset=utf-8"}
STREAM_REPEATED, TYPE_REPEATED, HAS_METADATA = 0x01, 0x02, 0x04


@dataclass
class Record:
    seq: int
    ts: int
    stream: str
    version: int
    type: str
    schema: int
    content_type: str
    metadata: list = field(default_factory=list)  # [(key, value)], keys increasing
    payload: bytes = b""


# ---- §4.1 segment header

def segment_header(ledger_id, index, first_seq, prev_chain):
    h = b"BILEDGER" + u16(1) + u16(HEADER_LEN) + u32(0) + ledger_id + u64(index) + u64(first_seq) + prev_chain
    return h + u32(crc32c(h))


def parse_segment_header(b):
    """§4.1 checks 1-5 in their order; returns (ledger id, index, first seq, prev chain)."""
    if len(b) < 12:
        raise FormatError(len(b), "segment header cut short")
    if b[:8] != b"BILEDGER":
        raise FormatError(0, f"bad magic {bytes(b[:8])!r}")
    version, hlen = struct.unpack_from("<HH", b, 8)
    if version != 1:
        raise FormatError(8, f"unsupported format version {version}")
    if hlen != HEADER_LEN:
        raise FormatError(10, f"header length {hlen}, not 84")
    if len(b) < HEADER_LEN:
        raise FormatError(len(b), "segment header cut short")
    stored, computed = struct.unpack_from("<I", b, 80)[0], crc32c(b[:80])
    if stored != computed:
        raise FormatError(80, f"header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")
    if struct.unpack_from("<I", b, 12)[0] != 0:
        raise FormatError(12, "non-zero segment flags")
    index, first = struct.unpack_from("<QQ", b, 32)
    return bytes(b[16:32]), index, first, bytes(b[48:80])


# ---- §5.1 frames, classified as §12.2 says

class BadFrame(Exception):
    """An incomplete or corrupt frame (§12.2). `reaches_end`: it might be a
    write torn by a crash (§12.2 conditions 1 and 2)."""

    def __init__(self, offset, what, reaches_end):
        super().__init__(what)
        self.offset, self.what, self.reaches_end = offset, what, reaches_end


@dataclass
class Frame:
    offset: int
    length: int  # 12 + body length
    first_seq: int
    base_ts: int
    records: list


def _reaches_end(seg, off, max_body):
    """§12.2: could the bad frame at `off` be the tail of a torn last append?"""
    n = len(seg)
    written_end = len(bytes(seg).rstrip(b"\0"))
    if written_end - off > 12 + max_body:
        return False
    if n - off < 12:
        return True
    body_len, check, stored = struct.unpack_from("<III", seg, off)
    if seg[off:off + 8] == b"\0" * 8:
        return True
    if body_len != check ^ 0xFFFFFFFF:
        return False  # a damaged length never reaches the end
    end = off + 12 + body_len
    if end > n:
        return True
    if end < written_end or crc32c(seg[off:off + 4] + seg[off + 12:end]) == stored:
        return False
    # Zeros where the write stopped: its last bytes, or a zero sector.
    return end > written_end or _has_zero_sector(seg, off, end)


SECTOR = 512


def _has_zero_sector(seg, off, end):
    """§12.2: 512 zero bytes at a multiple of 512 after `off`, within the frame."""
    at = (off // SECTOR + 1) * SECTOR
    while at + SECTOR <= end:
        if not any(seg[at:at + SECTOR]):
            return True
        at += SECTOR
    return False


def read_frame(seg, off, max_body):
    """Reads the frame at `off` (§5.1 checks 1-8 in order). Returns a Frame,
    or None where only zeros are left (unwritten space, §12.2). Raises
    BadFrame for an incomplete or corrupt frame and FormatError (offset
    in the segment) for a complete frame whose records do not decode."""
    n = len(seg)
    if not any(seg[off:]):
        return None

    def bad(what):
        return BadFrame(off, what, _reaches_end(seg, off, max_body))

    if n - off < 12:
        raise bad(f"frame header cut short ({n - off} bytes)")
    body_len, check, stored = struct.unpack_from("<III", seg, off)
    if seg[off:off + 8] == b"\0" * 8:
        raise bad("unwritten (all-zero) frame header followed by data")
    if body_len != check ^ 0xFFFFFFFF:
        raise bad(f"damaged length: body length {body_len} vs length check {check:#010x}")
    if not 20 <= body_len <= max_body:
        raise bad(f"body length {body_len} out of range 20..{max_body}")
    if off + 12 + body_len > n:
        raise bad(f"incomplete frame: {12 + body_len} bytes declared, {n - off} present")
    body = seg[off + 12:off + 12 + body_len]
    computed = crc32c(seg[off:off + 4] + body)
    if computed != stored:
        raise bad(f"frame CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")
    first, count, base = struct.unpack_from("<QIq", body, 0)
    if count == 0:
        raise BadFrame(off, "batch holds no records", False)
    if first + count > MAX_U64:
        raise BadFrame(off, "sequence numbers overflow", False)
    try:
        records = decode_records(body, first, count, base)
    except FormatError as e:  # §5.1 step 8: at the field at fault
        raise FormatError(off + 12 + e.offset, e.what) from None
    return Frame(off, 12 + body_len, first, base, records)


# ---- §6 records

def decode_records(body, first, count, base):
    """§6.1 stored records after the 20-byte body header, with the derived
    fields of §6.2. Offsets in errors are relative to the body."""
    cur = Cursor(body, 20)
    ts, prev, records = base, None, []
    for j in range(count):
        at = cur.pos
        flags = cur.u8("record flags")
        if flags & 0xF8:
            raise FormatError(at, f"unknown record flags {flags:#04x}")
        if j == 0 and flags & (STREAM_REPEATED | TYPE_REPEATED):
            raise FormatError(at, "first record of a batch elides its stream or type")
        delta_at = cur.pos
        delta = cur.varint("timestamp delta")
        if delta > MAX_I64 or ts + delta > MAX_I64:
            raise FormatError(delta_at, "timestamp delta too large or timestamp overflows i64")
        ts += delta
        stream = prev.stream if flags & STREAM_REPEATED else cur.str_v("stream id")
        version = cur.varint("stream version")
        etype = prev.type if flags & TYPE_REPEATED else cur.str_v("event type")
        schema_at = cur.pos
        schema = cur.varint("schema version")
        if schema > 2**32 - 1:
            raise FormatError(schema_at, "schema version exceeds 32 bits")
        code_at = cur.pos
        code = cur.u8("content type code")
        if code == 0:
            content_type = cur.str_v("content type")
        elif code in CONTENT_TYPES:
            content_type = CONTENT_TYPES[code]
        else:
            raise FormatError(code_at, f"unknown content type code {code}")
        metadata = []
        if flags & HAS_METADATA:
            count_at = cur.pos
            n = cur.varint("metadata count")
            if not 1 <= n <= 2**32 - 1:
                raise FormatError(count_at, f"metadata count {n} out of range")
            for _ in range(n):
                key_at = cur.pos
                key = cur.str_v("metadata key")
                value = cur.str_v("metadata value")
                if metadata and key.encode() <= metadata[-1][0].encode():
                    raise FormatError(key_at, "metadata keys not strictly increasing")
                metadata.append((key, value))
        payload = cur.bytes_v("payload")
        prev = Record(first + j, ts, stream, version, etype, schema, content_type, metadata, payload)
        records.append(prev)
    if cur.left():
        raise FormatError(cur.pos, f"{cur.left()} trailing bytes after the last record")
    return records


def encode_frame(first, base, records):
    """§5.1/§6.1 as a writer must: elide repeats, use content type codes."""
    body = bytearray(u64(first) + u32(len(records)) + i64(base))
    codes = {v: k for k, v in CONTENT_TYPES.items()}
    prev, ts = None, base
    for r in records:
        flags = (STREAM_REPEATED if prev and prev.stream == r.stream else 0) | (
            TYPE_REPEATED if prev and prev.type == r.type else 0) | (HAS_METADATA if r.metadata else 0)
        body += u8(flags) + varint(r.ts - ts)
        body += b"" if flags & STREAM_REPEATED else bytes_v(r.stream)
        body += varint(r.version)
        body += b"" if flags & TYPE_REPEATED else bytes_v(r.type)
        code = codes.get(r.content_type, 0)
        body += varint(r.schema) + u8(code) + (bytes_v(r.content_type) if code == 0 else b"")
        if r.metadata:
            body += varint(len(r.metadata)) + b"".join(bytes_v(k) + bytes_v(v) for k, v in r.metadata)
        body += bytes_v(r.payload)
        prev, ts = r, r.ts
    length = u32(len(body))
    return length + u32(len(body) ^ 0xFFFFFFFF) + u32(crc32c(length + body)) + bytes(body)


# ---- §7 canonical entries

def canonical_entry(r):
    out = bytearray(u8(1) + u64(r.seq) + i64(r.ts) + bytes_u32(r.stream) + u64(r.version))
    out += bytes_u32(r.type) + u32(r.schema) + bytes_u32(r.content_type) + u32(len(r.metadata))
    for k, v in r.metadata:
        out += bytes_u32(k) + bytes_u32(v)
    return bytes(out + u64(len(r.payload)) + r.payload)


def decode_entry(e):
    """§9.3 step 2: the whole entry, every length exact, nothing trailing."""
    cur = Cursor(e)
    if cur.u8("entry version") != 1:
        raise FormatError(0, "entry version is not 1")
    seq, ts = cur.u64("sequence number"), cur.i64("timestamp")
    stream, version = cur.str_u32("stream id"), cur.u64("stream version")
    etype, schema = cur.str_u32("event type"), cur.u32("schema version")
    content_type = cur.str_u32("content type")
    metadata = []
    for _ in range(cur.u32("metadata count")):
        key_at = cur.pos
        key, value = cur.str_u32("metadata key"), cur.str_u32("metadata value")
        if metadata and key.encode() <= metadata[-1][0].encode():
            raise FormatError(key_at, "metadata keys not strictly increasing")
        metadata.append((key, value))
    payload_at = cur.pos
    n = cur.u64("payload length")
    if n != cur.left():
        raise FormatError(payload_at, f"payload length {n}, but {cur.left()} bytes follow")
    return Record(seq, ts, stream, version, etype, schema, content_type, metadata, cur.take(n, "payload"))
