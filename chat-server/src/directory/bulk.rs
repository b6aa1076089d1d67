//! `POST /identity/fetch_bulk` (spec §12): how Threema's current clients look up identities,
//! unknown senders included. Request `{"identities": ["ABCD1234", …]}`; response
//! `{"identities": [{"identity", "type", "publicKey", "state", "featureMask"}, …]}` in request
//! order, each identity once, unknown ones left out (as Threema's directory leaves out unknown
//! and revoked ones). Pure: the HTTP handler supplies the lookup.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::is_valid_identity;
use tandem_shared::proto::common::CspFeatureMaskFlag;

use crate::types::Identity;

/// Most identities one request may ask for. Bounded so that one request is one small answer;
/// 256 names also fit the directory's 4 KiB body limit (11 bytes each in JSON).
pub const MAX_BULK_IDENTITIES: usize = 256;

/// `type` of every identity here: 0 = regular (1 would be Threema Work, which Tandem has not).
pub const IDENTITY_TYPE_REGULAR: u8 = 0;

/// `state` of every identity here: 0 = active (Tandem never revokes or deactivates one).
pub const IDENTITY_STATE_ACTIVE: u8 = 0;

/// `featureMask` (common.proto `CspFeatureMaskFlag`) answered for every identity: what Tandem's
/// own client handles, groups (0x0002). Threema clients set theirs with an endpoint Tandem does
/// not have, so this is a floor that every client registered here can take.
pub const FEATURE_MASK: u64 = CspFeatureMaskFlag::GroupSupport as u64;

#[derive(Debug, Deserialize)]
struct Request {
    identities: Vec<String>,
}

/// Why a bulk request is refused (HTTP 400); the text is the `error` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// Not JSON, or not `{"identities": [string, …]}`.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// More than [`MAX_BULK_IDENTITIES`] names.
    #[error("identities: {0} names, at most {MAX_BULK_IDENTITIES} per request")]
    TooMany(usize),
    /// A name that is not an identity.
    #[error("identities[{0}]: must be 8 characters [0-9A-Z] (a leading * is allowed)")]
    InvalidIdentity(usize),
}

/// The identities a request body asks for, each once, in request order.
pub(super) fn requested(body: &[u8]) -> Result<Vec<Identity>, BulkError> {
    let request: Request =
        serde_json::from_slice(body).map_err(|e| BulkError::Malformed(e.to_string()))?;
    if request.identities.len() > MAX_BULK_IDENTITIES {
        return Err(BulkError::TooMany(request.identities.len()));
    }
    let mut seen = Vec::with_capacity(request.identities.len());
    for (index, name) in request.identities.iter().enumerate() {
        let identity = <Identity>::try_from(name.as_bytes())
            .ok()
            .filter(is_valid_identity)
            .ok_or(BulkError::InvalidIdentity(index))?;
        if !seen.contains(&identity) {
            seen.push(identity);
        }
    }
    Ok(seen)
}

/// Answers a request body; `lookup` gives an identity's public key if the directory has it.
pub fn fetch_bulk(
    body: &[u8],
    lookup: impl Fn(&Identity) -> Option<PublicKey>,
) -> Result<Value, BulkError> {
    let seen = requested(body)?;
    let found: Vec<Value> = seen
        .iter()
        .filter_map(|identity| {
            let key = lookup(identity)?;
            Some(json!({
                "identity": String::from_utf8_lossy(identity),
                "type": IDENTITY_TYPE_REGULAR,
                "publicKey": B64.encode(key.as_bytes()),
                "state": IDENTITY_STATE_ACTIVE,
                "featureMask": FEATURE_MASK,
            }))
        })
        .collect();
    Ok(json!({ "identities": found }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ALICE: &Identity = b"ALICE123";
    const GATEWAY: &Identity = b"*GATEWAY";

    fn lookup(identity: &Identity) -> Option<PublicKey> {
        match identity {
            ALICE => Some(PublicKey([0x11; 32])),
            GATEWAY => Some(PublicKey([0xfe; 32])),
            _ => None,
        }
    }

    /// Conformance vector written by hand from spec §12 (the field names current clients read):
    /// request order kept, duplicates answered once, unknown identities left out.
    #[test]
    fn answers_known_identities_with_the_current_fields() {
        let body = br#"{"identities":["ALICE123","NOBODY00","*GATEWAY","ALICE123"]}"#;
        let answer = fetch_bulk(body, lookup).unwrap();
        let expected: Value = serde_json::from_str(
            r#"{"identities":[
                {"identity":"ALICE123","type":0,
                 "publicKey":"ERERERERERERERERERERERERERERERERERERERERERE=","state":0,"featureMask":2},
                {"identity":"*GATEWAY","type":0,
                 "publicKey":"/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v4=","state":0,"featureMask":2}
            ]}"#,
        )
        .unwrap();
        assert_eq!(answer, expected);
    }

    #[test]
    fn empty_and_all_unknown_lists_answer_an_empty_list() {
        for body in [
            &br#"{"identities":[]}"#[..],
            br#"{"identities":["NOBODY00"]}"#,
            // Unknown fields are ignored (a newer client may send more).
            br#"{"identities":[],"appVariant":"consumer"}"#,
        ] {
            assert_eq!(
                fetch_bulk(body, lookup).unwrap(),
                json!({ "identities": [] })
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"identities":"ALICE123"}"#,
            br#"{"identities":[1]}"#,
            br#"["ALICE123"]"#,
        ] {
            assert!(
                matches!(fetch_bulk(body, lookup), Err(BulkError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            fetch_bulk(br#"{"identities":["ALICE123","alice123"]}"#, lookup),
            Err(BulkError::InvalidIdentity(1))
        );
        assert_eq!(
            fetch_bulk(br#"{"identities":["ALICE1234"]}"#, lookup),
            Err(BulkError::InvalidIdentity(0))
        );
        let names = vec!["NOBODY00"; MAX_BULK_IDENTITIES + 1];
        let body = serde_json::to_vec(&json!({ "identities": names })).unwrap();
        assert_eq!(
            fetch_bulk(&body, lookup),
            Err(BulkError::TooMany(MAX_BULK_IDENTITIES + 1))
        );
        let names = vec!["NOBODY00"; MAX_BULK_IDENTITIES];
        let body = serde_json::to_vec(&json!({ "identities": names })).unwrap();
        assert!(body.len() <= super::super::http::MAX_BODY);
        assert_eq!(
            fetch_bulk(&body, lookup).unwrap(),
            json!({ "identities": [] })
        );
    }
}
