//! LEB128 unsigned varints (as in protobuf and LevelDB): 7 bits a byte,
//! least significant group first, high bit set on every byte but the last.

use super::DecodeError;

pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Decodes a varint at `buf[*pos..]`, advancing `pos`. Rejects overlong
/// encodings (a final zero byte after the first, or more than 64 bits) so
/// that every value has exactly one encoding: the bytes are hashed.
pub fn get(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let start = *pos;
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(DecodeError::new(start, "varint runs past the end"));
        };
        *pos += 1;
        let low = (b & 0x7f) as u64;
        if shift == 63 && low > 1 {
            return Err(DecodeError::new(start, "varint overflows 64 bits"));
        }
        v |= low << shift;
        if b & 0x80 == 0 {
            if b == 0 && shift > 0 {
                return Err(DecodeError::new(start, "varint is not minimally encoded"));
            }
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err(DecodeError::new(start, "varint overflows 64 bits"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            prop_assert_eq!(buf.len(), len(v));
            let mut pos = 0;
            prop_assert_eq!(get(&buf, &mut pos).unwrap(), v);
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn truncation_is_an_error(v in 128u64..) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            let mut pos = 0;
            prop_assert!(get(&buf[..buf.len() - 1], &mut pos).is_err());
        }
    }

    #[test]
    fn rejects_overlong_and_overflow() {
        assert!(get(&[0x80, 0x00], &mut 0).is_err());
        assert!(get(&[0xff; 11], &mut 0).is_err());
        assert!(get(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &mut 0
        )
        .is_err());
        assert_eq!(
            get(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                &mut 0
            )
            .unwrap(),
            u64::MAX
        );
    }
}
