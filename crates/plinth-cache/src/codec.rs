//! How values travel to the slower tiers: compressed with lz4 above the
//! keyspace's threshold, then encrypted with AES-256-GCM when the keyspace
//! asks for it. L1 keeps plain values, so hot reads pay for neither.
//!
//! Encrypted values are `nonce (12 bytes) || ciphertext+tag`; every value
//! gets a fresh random nonce.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use plinth_core::Error;
use rand::RngCore;

use crate::model::{CacheEntry, ValueEncoding};

const NONCE_BYTES: usize = 12;

pub struct ValueCodec {
    cipher: Option<Aes256Gcm>,
}

impl ValueCodec {
    /// `key` is the 32-byte AES-256 key, when encryption is configured.
    pub fn new(key: Option<[u8; 32]>) -> Self {
        ValueCodec {
            cipher: key.map(|key| Aes256Gcm::new(&key.into())),
        }
    }

    pub fn can_encrypt(&self) -> bool {
        self.cipher.is_some()
    }

    /// The entry as slower tiers store it.
    pub fn encode(
        &self,
        entry: &CacheEntry,
        compression_threshold: Option<usize>,
        encrypt: bool,
    ) -> Result<CacheEntry, Error> {
        let mut value = entry.value.clone();
        let mut encoding = ValueEncoding::default();
        // Counters stay readable by the tiers that increment them in place.
        if let Some(threshold) = compression_threshold
            && value.len() >= threshold
            && !is_integer_text(&value)
        {
            let compressed = lz4_flex::compress_prepend_size(&value);
            // Incompressible data is kept as it is.
            if compressed.len() < value.len() {
                value = Bytes::from(compressed);
                encoding.compressed = true;
            }
        }
        if encrypt {
            let Some(cipher) = &self.cipher else {
                return Err(Error::internal(
                    "encryption asked for but no cache.encryption_key is configured",
                ));
            };
            let mut nonce = [0u8; NONCE_BYTES];
            rand::rng().fill_bytes(&mut nonce);
            let ciphertext = cipher
                .encrypt(&Nonce::from(nonce), value.as_ref())
                .map_err(|_| Error::internal("value encryption failed"))?;
            let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
            sealed.extend_from_slice(&nonce);
            sealed.extend_from_slice(&ciphertext);
            value = Bytes::from(sealed);
            encoding.encrypted = true;
        }
        Ok(CacheEntry {
            value,
            encoding,
            ..entry.clone()
        })
    }

    /// The entry with its plain value.
    pub fn decode(&self, entry: CacheEntry) -> Result<CacheEntry, Error> {
        let mut value = entry.value.clone();
        if entry.encoding.encrypted {
            let Some(cipher) = &self.cipher else {
                return Err(Error::internal(
                    "an encrypted value was read but no cache.encryption_key is configured",
                ));
            };
            if value.len() < NONCE_BYTES {
                return Err(Error::internal("an encrypted value is truncated"));
            }
            let (nonce, ciphertext) = value.split_at(NONCE_BYTES);
            let nonce: [u8; NONCE_BYTES] = nonce
                .try_into()
                .map_err(|_| Error::internal("an encrypted value is truncated"))?;
            let plain = cipher
                .decrypt(&Nonce::from(nonce), ciphertext)
                .map_err(|_| {
                    Error::internal(
                        "an encrypted value failed authentication (wrong key or tampered)",
                    )
                })?;
            value = Bytes::from(plain);
        }
        if entry.encoding.compressed {
            let plain = lz4_flex::decompress_size_prepended(&value).map_err(|error| {
                Error::internal(format!("a compressed value is corrupt: {error}"))
            })?;
            value = Bytes::from(plain);
        }
        Ok(CacheEntry {
            value,
            encoding: ValueEncoding::default(),
            ..entry
        })
    }
}

fn is_integer_text(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|text| text.trim().parse::<i64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_with(value: &[u8]) -> CacheEntry {
        CacheEntry {
            value: Bytes::copy_from_slice(value),
            encoding: ValueEncoding::default(),
            content_type: "application/octet-stream".to_string(),
            tags: vec![],
            revision: 7,
            written_at_ms: 1,
            expires_at_ms: None,
            tombstone: false,
        }
    }

    #[test]
    fn values_round_trip_through_every_encoding() {
        let codec = ValueCodec::new(Some([7u8; 32]));
        let compressible = vec![b'a'; 10_000];
        for (value, threshold, encrypt) in [
            (compressible.as_slice(), Some(100), false),
            (compressible.as_slice(), Some(100), true),
            (b"short".as_slice(), Some(100), true),
            (b"short".as_slice(), None, false),
        ] {
            let entry = entry_with(value);
            let encoded = codec.encode(&entry, threshold, encrypt).unwrap();
            assert_eq!(encoded.encoding.encrypted, encrypt);
            if encrypt {
                assert!(!encoded.value.windows(5).any(|window| window == &value[..5]));
            }
            assert_eq!(codec.decode(encoded).unwrap(), entry);
        }
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let codec = ValueCodec::new(Some([7u8; 32]));
        let encoded = codec
            .encode(&entry_with(b"secret value"), None, true)
            .unwrap();
        let mut tampered = encoded.value.to_vec();
        tampered[NONCE_BYTES] ^= 1;
        let tampered_entry = CacheEntry {
            value: Bytes::from(tampered),
            ..encoded.clone()
        };
        assert!(codec.decode(tampered_entry).is_err());
        assert!(ValueCodec::new(Some([8u8; 32])).decode(encoded).is_err());
    }
}
