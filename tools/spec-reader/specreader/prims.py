"""§2 conventions: integers, varints, strings, CRC32C, SHA-256, base64."""
import base64
import hashlib
import re
import struct


class Fail(Exception):
    """The first thing that differs from the spec: where, and what.

    `blob` is the blob name (`main/0000000001.seg`) or another file the
    check read; `offset` is a byte offset in it, or None.
    """

    def __init__(self, blob, offset, what):
        super().__init__(what)
        self.blob, self.offset, self.what = blob, offset, what

    def line(self):
        at = f" at byte {self.offset}" if self.offset is not None else ""
        return f"FAIL {self.blob}{at}: {self.what}"


class FormatError(Exception):
    """A decoding error at an offset within the buffer being decoded; the
    caller knows the blob and the buffer's base offset and turns it into
    a Fail."""

    def __init__(self, offset, what):
        super().__init__(what)
        self.offset, self.what = offset, what


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


# §2.4: CRC-32C, reflected 0x82F63B78, init and final XOR 0xFFFFFFFF, not masked.
def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for x in data:
        c = _CRC_TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def i64(v):
    return struct.pack("<q", v)


# §2.2: unsigned LEB128, at most 64 bits, exactly one encoding per value.
def varint(v):
    out = bytearray()
    while True:
        low, v = v & 0x7F, v >> 7
        if not v:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def bytes_v(b):
    """§2.3 `bytes(v)`: varint length, then the bytes (str is UTF-8)."""
    b = b.encode() if isinstance(b, str) else b
    return varint(len(b)) + b


def bytes_u32(b):
    """§2.3 `bytes(u32)`, used by canonical entries (§7)."""
    b = b.encode() if isinstance(b, str) else b
    return u32(len(b)) + b


class Cursor:
    """Bounds-checked reading of `buf[pos:end]`; every error names the
    offset (relative to the buffer) of the field that failed."""

    def __init__(self, buf, pos=0, end=None):
        self.buf, self.pos = buf, pos
        self.end = len(buf) if end is None else end

    def left(self):
        return self.end - self.pos

    def take(self, n, what):
        if n > self.left():
            raise FormatError(self.pos, f"{what} runs past the end")
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def fixed(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u8(self, what):
        return self.fixed("<B", what)

    def u16(self, what):
        return self.fixed("<H", what)

    def u32(self, what):
        return self.fixed("<I", what)

    def u64(self, what):
        return self.fixed("<Q", what)

    def i64(self, what):
        return self.fixed("<q", what)

    def varint(self, what):
        # §2.2: reject `80 00`-style padding, more than 10 bytes, more than 64 bits.
        start, v = self.pos, 0
        for i in range(10):
            if self.pos >= self.end:
                raise FormatError(start, f"{what}: varint runs past the end")
            x = self.buf[self.pos]
            self.pos += 1
            if i == 9 and x > 1:
                raise FormatError(start, f"{what}: varint exceeds 64 bits")
            v |= (x & 0x7F) << (7 * i)
            if not x & 0x80:
                if i > 0 and x == 0:
                    raise FormatError(start, f"{what}: varint not minimal")
                return v
        raise FormatError(start, f"{what}: varint longer than 10 bytes")

    def bytes_v(self, what):
        return self._prefixed(self.varint, what)

    def bytes_u32(self, what):
        return self._prefixed(self.u32, what)

    def _prefixed(self, length, what):
        """§2.3: bytes after their length, read by `length`."""
        start = self.pos
        n = length(what + " length")
        if n > self.left():
            raise FormatError(start, f"{what}: length {n} runs past the end")
        return self.take(n, what)

    def utf8(self, raw, start, what):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(start, f"{what} is not UTF-8") from None

    def str_v(self, what):
        start = self.pos
        return self.utf8(self.bytes_v(what), start, what)

    def str_u32(self, what):
        start = self.pos
        return self.utf8(self.bytes_u32(what), start, what)


# §2.6: canonical padded base64 only, where it is part of signed text.
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def text_lines(data, what):
    """UTF-8 text split at LF, with each line's byte offset (for errors)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(e.start, f"{what} is not UTF-8") from None
    lines = text.split("\n")
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln.encode()) + 1)
    return text, lines, starts


def b64encode(b):
    return base64.b64encode(b).decode("ascii")


def b64decode_canonical(s):
    """Decoded bytes, or None unless `s` is the canonical encoding."""
    if not _B64.fullmatch(s):
        return None
    raw = base64.b64decode(s)
    return raw if b64encode(raw) == s else None


def first_difference(a, b):
    """Offset of the first byte where a and b differ (or the shorter length)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
