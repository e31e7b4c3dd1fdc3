//! Key files. A signing key is stored as a C2SP-style private note key,
//! `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || 32-byte seed)>`, and a
//! public key as the matching verifier key `<name>+<key id hex>+<base64(0x01 || key)>`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::format::checkpoint::Verifier;
use crate::format::hex;

#[derive(Debug, thiserror::Error)]
#[error("signing key: {0}")]
pub struct KeyError(String);

pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn encode_signing_key(name: &str, key: &SigningKey) -> String {
    let v = Verifier {
        name: name.to_owned(),
        key: key.verifying_key(),
    };
    let mut typed = vec![0x01];
    typed.extend_from_slice(key.as_bytes());
    format!(
        "PRIVATE+KEY+{name}+{}+{}\n",
        hex(&v.key_id()),
        BASE64.encode(typed)
    )
}

/// Parses a private key string; returns its name and key. The key id is
/// checked so that a damaged file is not mistaken for another key.
pub fn decode_signing_key(s: &str) -> Result<(String, SigningKey), KeyError> {
    let rest = s
        .trim()
        .strip_prefix("PRIVATE+KEY+")
        .ok_or_else(|| KeyError("expected a file starting with PRIVATE+KEY+".into()))?;
    let mut parts = rest.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KeyError(
            "expected PRIVATE+KEY+<name>+<key id>+<base64 key>".into(),
        ));
    };
    let typed = BASE64
        .decode(b64)
        .map_err(|_| KeyError("key is not valid base64".into()))?;
    if typed.len() != 33 || typed[0] != 0x01 {
        return Err(KeyError(
            "expected an Ed25519 key (type 0x01, 32 bytes)".into(),
        ));
    }
    let key = SigningKey::from_bytes(typed[1..].try_into().unwrap());
    let v = Verifier {
        name: name.to_owned(),
        key: key.verifying_key(),
    };
    if !hex(&v.key_id()).eq_ignore_ascii_case(id) {
        return Err(KeyError(
            "key id does not match the key (damaged key file?)".into(),
        ));
    }
    Ok((name.to_owned(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let s = encode_signing_key("bi-ledger/main", &k);
        let (name, back) = decode_signing_key(&s).unwrap();
        assert_eq!(name, "bi-ledger/main");
        assert_eq!(back.as_bytes(), k.as_bytes());
        let damaged = s.replacen(
            "PRIVATE+KEY+bi-ledger/main+",
            "PRIVATE+KEY+bi-ledger/mainx+",
            1,
        );
        assert!(decode_signing_key(&damaged).is_err());
    }
}
