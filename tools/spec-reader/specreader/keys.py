"""§3.4 the LEDGER identity file and §3.5 key strings."""
import base64
import re

from . import ed25519
from .prims import FormatError, b64encode, first_difference, sha256, text_lines

DEFAULT_BLOCK = 4194304  # §3.4: B when the LEDGER file has no block line

# §3.5: Unicode White_Space (as Go's unicode.IsSpace) and general category Cc.
_WHITE_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000")
_WHITE_SPACE |= {chr(c) for c in range(0x2000, 0x200B)}


def valid_key_name(name):
    return bool(name) and all(
        ch != "+" and ch not in _WHITE_SPACE and not (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F)
        for ch in name
    )


def key_id(name, pub):
    """§3.5: first 4 bytes of SHA-256(name || 0x0A || 0x01 || key), digest order."""
    return sha256(name.encode(), b"\n\x01", pub)[:4]


class VerifierKey:
    def __init__(self, name, pub):
        self.name, self.pub, self.kid = name, pub, key_id(name, pub)

    def text(self):
        """The canonical spelling: lower-case key id."""
        return f"{self.name}+{self.kid.hex()}+{b64encode(bytes([1]) + self.pub)}"

    def __eq__(self, other):
        return (self.name, self.pub) == (other.name, other.pub)


def _key_parts(s, what):
    parts = s.split("+", 2)  # §3.5: base64 may contain '+', split at the first two only
    if len(parts) != 3:
        raise ValueError(f"{what}: expected name+keyid+base64")
    name, kid, b64 = parts
    if not valid_key_name(name):
        raise ValueError(f"{what}: invalid key name {name!r}")
    if not re.fullmatch(r"[0-9a-fA-F]{8}", kid):  # either case
        raise ValueError(f"{what}: key id {kid!r} is not 8 hex digits")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError(f"{what}: bad base64") from None
    if len(raw) != 33 or raw[0] != 1:
        raise ValueError(f"{what}: not 0x01 and 32 bytes")
    return name, bytes.fromhex(kid), raw[1:]


def parse_verifier_key(s):
    """§3.5; raises ValueError with the reason."""
    name, kid, pub = _key_parts(s.strip(), "verifier key")
    if not ed25519.valid_public_key(pub):
        raise ValueError("verifier key: not a valid Ed25519 point, or of small order")
    key = VerifierKey(name, pub)
    if key.kid != kid:
        raise ValueError(f"verifier key: key id {kid.hex()} should be {key.kid.hex()}")
    return key


def parse_signing_key(s):
    """§3.5 signing key file; returns (name, seed, VerifierKey)."""
    s = s.strip()
    if not s.startswith("PRIVATE+KEY+"):
        raise ValueError("signing key: does not start with PRIVATE+KEY+")
    name, kid, seed = _key_parts(s[len("PRIVATE+KEY+"):], "signing key")
    key = VerifierKey(name, ed25519.public_key(seed))
    if key.kid != kid:
        raise ValueError("signing key: key id does not match the name and key")
    return name, seed, key


def ledger_file_text(name, ledger_id, key, block):
    """§3.4: the one valid spelling of the LEDGER file."""
    text = f"bi-ledger ledger v1\nname {name}\nid {ledger_id.hex()}\nkey {key.text()}\n"
    return text + (f"block {block}\n" if block != DEFAULT_BLOCK else "")


def parse_ledger_file(data, ledger_name):
    """§3.4; returns (ledger id, VerifierKey, B). Raises FormatError."""
    _, lines, starts = text_lines(data, "LEDGER file")

    def line(i, keyword):
        if i >= len(lines) - 1:  # the last element is what follows the final LF
            raise FormatError(len(data), f"line {i + 1} ({keyword}) missing, or without its LF")
        if i > 0 and not lines[i].startswith(keyword + " "):
            raise FormatError(starts[i], f"line {i + 1} should start with '{keyword} '")
        return lines[i][len(keyword) + 1:]

    if lines[0] != "bi-ledger ledger v1":  # §12.1: the version check
        raise FormatError(0, f"first line is {lines[0][:40]!r}, not 'bi-ledger ledger v1'")
    name = line(1, "name")
    if name != ledger_name:
        raise FormatError(starts[1], f"name {name!r} is not the ledger's name {ledger_name!r}")
    lid = line(2, "id")
    if not re.fullmatch(r"[0-9a-fA-F]{32}", lid):
        raise FormatError(starts[2], "id is not 32 hex digits")
    try:
        key = parse_verifier_key(line(3, "key"))
    except ValueError as e:
        raise FormatError(starts[3], str(e)) from None
    if key.name != "bi-ledger/" + ledger_name:
        raise FormatError(starts[3], f"key name {key.name!r} is not 'bi-ledger/{ledger_name}'")
    block = DEFAULT_BLOCK
    if len(lines) > 5:
        b = line(4, "block")
        if not re.fullmatch(r"[1-9][0-9]*", b) or not 84 <= int(b) <= 2**32 - 1:
            raise FormatError(starts[4], f"block {b!r} is not a decimal from 84 to 2^32-1")
        block = int(b)
    canonical = ledger_file_text(name, bytes.fromhex(lid), key, block).encode()
    if data != canonical:  # exactly one valid spelling
        off = first_difference(data, canonical)
        raise FormatError(off, "not the canonical spelling of the LEDGER file")
    return bytes.fromhex(lid), key, block
