"""§10 checkpoints: C2SP tlog-checkpoint text in a signed note."""
import re
from dataclasses import dataclass

from . import ed25519
from .keys import valid_key_name
from .prims import FormatError, b64decode_canonical, b64encode, text_lines

EM_DASH = "\u2014"
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.\d{6}Z")


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes
    chain: bytes
    time: str
    snapshot: object  # bytes of the optional snapshot line (§10.1), or None
    body: bytes  # lines 1-5 (1-6 with the snapshot line) with their LFs: what is signed
    signatures: list  # [(key name, key id, signature, byte offset of the line)]


def body_text(origin, size, root, chain, time, snapshot=None):
    text = f"{origin}\n{size}\n{b64encode(root)}\nchain {b64encode(chain)}\ntime {time}\n"
    if snapshot is not None:
        text += f"snapshot {b64encode(snapshot)}\n"
    return text


def _valid_time(m):
    y, mo, d, hh, mi, ss = map(int, m.groups())
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1 <= mo <= 12 and 1 <= d <= days[mo - 1] and hh < 24 and mi < 60 and ss < 60


def parse_checkpoint(data):
    """§10.2 strict parsing. Errors name the line and its byte offset."""
    _, lines, starts = text_lines(data, "checkpoint")

    def err(i, what):
        return FormatError(starts[i], f"line {i + 1}: {what}")

    if lines[-1] != "":
        raise err(len(lines) - 1, "last line has no LF")
    lines.pop()
    for i, ln in enumerate(lines):
        if "\r" in ln:
            raise err(i, "holds a CR")
    if len(lines) < 7:
        raise err(len(lines), "missing line")
    origin, size, root, chain, time = lines[:5]
    if not valid_key_name(origin):
        raise err(0, f"origin {origin!r} is not a valid key name")
    if not re.fullmatch(r"0|[1-9][0-9]*", size) or int(size) > 2**64 - 1:
        raise err(1, f"size {size!r} is not a decimal without sign or leading zeros below 2^64")
    root_b = b64decode_canonical(root)
    if root_b is None or len(root_b) != 32:
        raise err(2, "root is not the canonical base64 of 32 bytes")
    if not chain.startswith("chain "):
        raise err(3, "does not start with 'chain '")
    chain_b = b64decode_canonical(chain[6:])
    if chain_b is None or len(chain_b) != 32:
        raise err(3, "chain head is not the canonical base64 of 32 bytes")
    if not time.startswith("time "):
        raise err(4, "does not start with 'time '")
    m = _TIME.fullmatch(time[5:])
    if not m or not _valid_time(m):
        raise err(4, f"time {time[5:]!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ (a real UTC time)")
    snapshot, body_lines = None, 5
    if lines[5].startswith("snapshot "):
        snapshot = b64decode_canonical(lines[5][9:])
        if snapshot is None or len(snapshot) != 32:
            raise err(5, "snapshot is not the canonical base64 of 32 bytes")
        body_lines = 6
        if len(lines) < 8:
            raise err(len(lines), "missing line")
    if lines[body_lines] != "":
        raise err(body_lines, "not empty (version 1 has no extension lines but chain, time and snapshot)")
    signatures = []
    for i in range(body_lines + 1, len(lines)):
        ln = lines[i]
        if not ln.startswith(EM_DASH + " "):
            raise err(i, "signature line does not start with U+2014 and a space")
        parts = ln[2:].split(" ")
        if len(parts) != 2 or not valid_key_name(parts[0]):
            raise err(i, "signature line: expected a key name, one space, base64")
        raw = b64decode_canonical(parts[1])
        if raw is None or len(raw) < 5:
            raise err(i, "signature is not the canonical base64 of at least 5 bytes")
        signatures.append((parts[0], raw[:4], raw[4:], starts[i]))
    body = "".join(ln + "\n" for ln in lines[:body_lines]).encode()
    return Checkpoint(origin, int(size), root_b, chain_b, time[5:], snapshot, body, signatures)


def open_checkpoint(data, key, origin, size):
    """§10.3: parse, find exactly one signature by `key`, verify it strictly,
    and check origin and size."""
    cp = parse_checkpoint(data)
    mine = [s for s in cp.signatures if s[0] == key.name and s[1] == key.kid]
    if len(mine) != 1:
        where = mine[1][3] if mine else len(cp.body) + 1
        raise FormatError(where, f"{len(mine)} signature lines by key {key.name}+{key.kid.hex()}, not 1")
    _, _, sig, line_at = mine[0]
    if len(sig) != 64:
        raise FormatError(line_at, f"signature is {len(sig)} bytes, not 64")
    if not ed25519.verify_strict(key.pub, cp.body, sig):
        raise FormatError(line_at, "Ed25519 signature does not verify (strict) over the body")
    if cp.origin != origin:
        raise FormatError(0, f"origin {cp.origin!r}, expected {origin!r}")
    if cp.size != size:
        raise FormatError(len(cp.origin.encode()) + 1, f"size {cp.size} differs from the blob name's {size}")
    return cp
