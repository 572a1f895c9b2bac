//! Portal user credentials: login and password rules, and the HA1 values
//! that SIP digest authentication verifies against.
//!
//! SIP digest (RFC 2617, RFC 7616/8760) needs `H(username:realm:password)` on
//! the server; a slow password hash such as argon2 cannot answer a digest
//! challenge. So the password itself is never kept: only the two HA1 values
//! (MD5 and SHA-256) for the portal's realm.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest accepted password, in characters.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest accepted username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 64;

/// Why a login or password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The username is empty, too long, or has characters a SIP URI user part
    /// would need to escape. Pick another.
    #[error(
        "username must be 1 to {MAX_USERNAME_BYTES} characters of letters, digits, `.`, `_`, `-` and must not start with `.` or `-`"
    )]
    BadUsername,
    /// The password is too short or too long.
    #[error("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters (got {chars})")]
    PasswordLength {
        /// Characters given.
        chars: usize,
    },
    /// The password holds control characters or white space, which phones
    /// cannot type reliably.
    #[error("password must not contain white space or control characters")]
    PasswordCharacters,
    /// The password is made of one repeated character or equals the username.
    #[error("password is too easy to guess (repeated character or same as username)")]
    PasswordWeak,
}

/// Checks a username against the login rules.
pub fn check_username(username: &str) -> Result<(), CredentialError> {
    let ok = !username.is_empty()
        && username.len() <= MAX_USERNAME_BYTES
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !username.starts_with(['.', '-']);
    if ok { Ok(()) } else { Err(CredentialError::BadUsername) }
}

/// Checks a password against the password rules.
pub fn check_password(username: &str, password: &str) -> Result<(), CredentialError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(CredentialError::PasswordLength { chars });
    }
    if password.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CredentialError::PasswordCharacters);
    }
    let first = password.chars().next();
    if password.chars().all(|c| Some(c) == first) || password.eq_ignore_ascii_case(username) {
        return Err(CredentialError::PasswordWeak);
    }
    Ok(())
}

/// The HA1 values of one user in one realm, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha1 {
    /// `MD5(username:realm:password)` (RFC 2617).
    pub md5: String,
    /// `SHA-256(username:realm:password)` (RFC 7616, RFC 8760).
    pub sha256: String,
}

impl Ha1 {
    /// Computes both HA1 values.
    pub fn compute(username: &str, realm: &str, password: &str) -> Self {
        let input = format!("{username}:{realm}:{password}");
        Self { md5: hex(&Md5::digest(input.as_bytes())), sha256: hex(&Sha256::digest(input.as_bytes())) }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_md5_matches_rfc2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        let h = Ha1::compute("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(h.md5, "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn ha1_sha256_matches_rfc7616_example() {
        // RFC 7616 §3.9.1: HA1 = SHA-256("Mufasa:http-auth@example.org:Circle of Life").
        let h = Ha1::compute("Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(h.sha256, "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232");
    }

    #[test]
    fn username_rules() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("a.b_c-1").is_ok());
        assert_eq!(check_username(""), Err(CredentialError::BadUsername));
        assert_eq!(check_username("-x"), Err(CredentialError::BadUsername));
        assert_eq!(check_username("al ice"), Err(CredentialError::BadUsername));
        assert_eq!(check_username("al@ice"), Err(CredentialError::BadUsername));
        assert!(check_username(&"a".repeat(64)).is_ok());
        assert_eq!(check_username(&"a".repeat(65)), Err(CredentialError::BadUsername));
    }

    #[test]
    fn password_rules_at_the_edges() {
        assert_eq!(check_password("u", "123456789"), Err(CredentialError::PasswordLength { chars: 9 }));
        assert!(check_password("u", "1234567890").is_ok());
        assert!(check_password("u", &"ab".repeat(64)).is_ok());
        assert_eq!(
            check_password("u", &"ab".repeat(64).replace("ab", "abc")[..129]),
            Err(CredentialError::PasswordLength { chars: 129 })
        );
        assert_eq!(check_password("u", "correct horse"), Err(CredentialError::PasswordCharacters));
        assert_eq!(check_password("u", "aaaaaaaaaaaa"), Err(CredentialError::PasswordWeak));
        assert_eq!(check_password("alice12345", "ALICE12345"), Err(CredentialError::PasswordWeak));
    }
}
