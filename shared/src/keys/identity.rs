//! Threema-style identities: 8 characters, `[0-9A-Z]`, or `*` first for gateway identities.

use super::IDENTITY_LEN;

/// Whether `identity` is a well-formed identity: `[0-9A-Z*][0-9A-Z]{7}`.
///
/// Used everywhere an identity crosses a trust boundary (login, message headers, backups,
/// directory), so that one rule holds for the whole system.
#[must_use]
pub fn is_valid_identity(identity: &[u8]) -> bool {
    identity.len() == IDENTITY_LEN
        && identity
            .iter()
            .enumerate()
            .all(|(i, &c)| c.is_ascii_uppercase() || c.is_ascii_digit() || (i == 0 && c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_regular_and_gateway_identities_only() {
        assert!(is_valid_identity(b"ECHOECHO"));
        assert!(is_valid_identity(b"0123ABCD"));
        assert!(is_valid_identity(b"*GATEWAY"));
        assert!(!is_valid_identity(b"ECHO*CHO"));
        assert!(!is_valid_identity(b"echoecho"));
        assert!(!is_valid_identity(b"ECHOECH"));
        assert!(!is_valid_identity(b"ECHOECHOE"));
        assert!(!is_valid_identity(b"ECHO-CHO"));
    }
}
