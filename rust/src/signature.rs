//! Webhook signatures: `x-agentmark-signature-256: sha256=<hex>`, an
//! HMAC-SHA256 of the raw request body.
//!
//! AgentMark's own helper keys an empty secret as the literal `DEFAULT`; the
//! same rule is kept here so a gateway and a platform configured alike agree.
//! Refusing to *run* without a secret is the caller's job, not this module's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "sha256=";
const DIGEST_LEN: usize = 32;

fn mac(secret: &str) -> HmacSha256 {
    let key: &[u8] = if secret.is_empty() { b"DEFAULT" } else { secret.as_bytes() };
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The header value for `body`: `sha256=` and 64 lower-case hex digits.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// The digest a header claims, or `None` when the header is malformed.
/// Hex digits of either case are accepted, as AgentMark's own parser does.
pub fn parse_header(header: &str) -> Option<[u8; DIGEST_LEN]> {
    let digits = header.strip_prefix(PREFIX)?;
    let mut digest = [0u8; DIGEST_LEN];
    hex::decode_to_slice(digits, &mut digest).ok()?;
    Some(digest)
}

/// Whether `header` is a valid signature of `body` under any of `secrets`.
/// Each comparison is constant-time; every secret is tried, so the time
/// taken does not tell which one matched.
pub fn verify<S: AsRef<str>>(secrets: &[S], header: &str, body: &[u8]) -> bool {
    let Some(claimed) = parse_header(header) else {
        return false;
    };
    let mut matched = false;
    for secret in secrets {
        let mut mac = mac(secret.as_ref());
        mac.update(body);
        matched |= mac.verify_slice(&claimed).is_ok();
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_tampering() {
        let header = sign("s3cret", b"{\"a\":1}");
        assert!(header.starts_with("sha256=") && header.len() == 71);
        assert!(verify(&["s3cret"], &header, b"{\"a\":1}"));
        assert!(verify(&["old", "s3cret"], &header, b"{\"a\":1}"));
        assert!(verify(&["s3cret"], &header.to_uppercase().replacen("SHA256", "sha256", 1), b"{\"a\":1}"));
        assert!(!verify(&["s3cret"], &header, b"{\"a\":2}"));
        assert!(!verify(&["other"], &header, b"{\"a\":1}"));
        assert!(!verify(&["s3cret"], &header[..70], b"{\"a\":1}"));
        assert!(!verify(&["s3cret"], &header[7..], b"{\"a\":1}"));
        assert!(!verify::<&str>(&[], &header, b"{\"a\":1}"));
    }

    #[test]
    fn empty_secret_means_default() {
        assert_eq!(sign("", b"x"), sign("DEFAULT", b"x"));
    }
}
