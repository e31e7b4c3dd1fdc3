"""Ed25519 (RFC 8032) in pure Python, with the strict verification of §10.3.

Slow (milliseconds per operation) and not constant-time: it checks
signatures, and signs only the public test vectors of §13.
"""
import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group order
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T)


def _sha512_int(*parts):
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    acc = IDENTITY
    while s > 0:
        if s & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        s >>= 1
    return acc


def _is_identity(pt):
    x, y, z, _ = pt
    return x % P == 0 and (y - z) % P == 0


def _recover_x(y, sign):
    # RFC 8032 §5.1.3 steps 1-4, refusing y >= p and x = 0 with the sign set.
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decode_point(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def encode_point(pt):
    zi = pow(pt[2], P - 2, P)
    x, y = pt[0] * zi % P, pt[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_BY = 4 * pow(5, P - 2, P) % P
BASE = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % P)


def is_small_order(pt):
    return _is_identity(_mul(8, pt))


def valid_public_key(pub):
    """§3.5: decodes, re-encodes to the same 32 bytes, not of small order."""
    pt = decode_point(pub)
    return pt is not None and encode_point(pt) == pub and not is_small_order(pt)


def _expand(seed):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)
    return a, h[32:]


def public_key(seed):
    return encode_point(_mul(_expand(seed)[0], BASE))


def sign(seed, msg):
    a, prefix = _expand(seed)
    pub = encode_point(_mul(a, BASE))
    r = _sha512_int(prefix, msg) % L
    rb = encode_point(_mul(r, BASE))
    k = _sha512_int(rb, pub, msg) % L
    return rb + ((r + k * a) % L).to_bytes(32, "little")


def verify_strict(pub, msg, sig):
    """§10.3 step 3: S < L, A and R decode and are not of small order, and
    [S]B - [k]A encodes to exactly the 32 bytes of R (no cofactor)."""
    if len(sig) != 64 or not valid_public_key(pub):
        return False
    rb, s = sig[:32], int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    r = decode_point(rb)
    if r is None or is_small_order(r):
        return False
    a = decode_point(pub)
    k = _sha512_int(rb, pub, msg) % L
    check = _add(_mul(s, BASE), _mul(L - k, a))
    return encode_point(check) == rb
