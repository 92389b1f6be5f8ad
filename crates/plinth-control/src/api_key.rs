//! API keys: how they are generated, what their text looks like, and how a
//! presented key is checked against its stored digest.
//!
//! A key reads `plk_<id>_<secret>`: the id (16 hex characters) is public
//! and finds the record; the secret (256 random bits, base64url) is shown
//! once at creation and only its SHA-256 digest is stored. The digest
//! comparison is constant-time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_PREFIX: &str = "plk_";
const KEY_ID_BYTES: usize = 8;
const KEY_SECRET_BYTES: usize = 32;

/// The full text of a key. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// The text to hand to the user, once.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(plinth_core::secret::REDACTED)
    }
}

/// A freshly generated key: what to store (id, digest) and what to show
/// (the full text).
#[derive(Debug)]
pub struct GeneratedApiKey {
    pub id: String,
    pub secret: ApiKeySecret,
    pub secret_sha256: [u8; 32],
}

impl GeneratedApiKey {
    pub fn generate() -> Self {
        let mut id_bytes = [0u8; KEY_ID_BYTES];
        let mut secret_bytes = [0u8; KEY_SECRET_BYTES];
        let mut random = rand::rng();
        random.fill_bytes(&mut id_bytes);
        random.fill_bytes(&mut secret_bytes);
        let id = hex::encode(id_bytes);
        let secret_part = URL_SAFE_NO_PAD.encode(secret_bytes);
        GeneratedApiKey {
            secret_sha256: digest_secret(&secret_part),
            secret: ApiKeySecret(format!("{KEY_PREFIX}{id}_{secret_part}")),
            id,
        }
    }
}

/// A presented token that looks like an API key, split into id and secret.
pub(crate) struct PresentedApiKey<'a> {
    pub id: &'a str,
    pub secret_part: &'a str,
}

/// Splits `plk_<id>_<secret>`; `None` when the token is not shaped like an
/// API key (it may then be a JWT).
pub(crate) fn parse_presented_key(token: &str) -> Option<PresentedApiKey<'_>> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret_part) = rest.split_once('_')?;
    let id_is_hex = id.len() == KEY_ID_BYTES * 2 && id.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !id_is_hex || secret_part.is_empty() || secret_part.len() > 128 {
        return None;
    }
    Some(PresentedApiKey { id, secret_part })
}

pub(crate) fn digest_secret(secret_part: &str) -> [u8; 32] {
    Sha256::digest(secret_part.as_bytes()).into()
}

/// Constant-time comparison of two digests.
pub(crate) fn digests_match(presented: &[u8; 32], stored: &[u8; 32]) -> bool {
    presented.ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_match_their_digest() {
        let generated = GeneratedApiKey::generate();
        let presented = parse_presented_key(generated.secret.reveal()).unwrap();
        assert_eq!(presented.id, generated.id);
        assert!(digests_match(
            &digest_secret(presented.secret_part),
            &generated.secret_sha256
        ));
        assert!(!digests_match(
            &digest_secret("forged"),
            &generated.secret_sha256
        ));
    }

    #[test]
    fn other_tokens_are_not_api_keys() {
        for token in [
            "",
            "plk_",
            "plk_zz_abc",
            "eyJhbGciOi.x.y",
            "plk_0123456789abcdef_",
        ] {
            assert!(parse_presented_key(token).is_none(), "{token}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let generated = GeneratedApiKey::generate();
        assert!(!format!("{generated:?}").contains(generated.secret.reveal()));
    }
}
