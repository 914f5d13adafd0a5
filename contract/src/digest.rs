//! Short SHA-256 digests in hex: derived ids and names (client tokens, object names, spec
//! hashes, token digests) that must be stable and collision-resistant but short.

use sha2::{Digest, Sha256};

/// The first `hex_chars` hex digits of SHA-256 of `data` (at most 64).
pub fn sha256_hex(data: impl AsRef<[u8]>, hex_chars: usize) -> String {
    let mut hex = format!("{:x}", Sha256::digest(data.as_ref()));
    hex.truncate(hex_chars);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_hex_prefixes_of_sha256() {
        let full = sha256_hex("abc", 64);
        assert_eq!(
            full,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_hex("abc", 16), full[..16]);
        assert_eq!(sha256_hex("abc", 100), full);
    }
}
