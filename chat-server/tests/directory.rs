//! The directory over HTTP (DESIGN §2.5): create → lookup round trip, server-info, and a 400
//! with a reason for every malformed request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use serde_json::{json, Value};
use support::{create_identity, http, http_json, http_raw, ServerProcess};
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::directory::client_response;
use tandem_shared::keys::ClientKey;

fn fresh_key() -> ClientKey {
    ClientKey::new(SecretKey::generate(&mut OsRng))
}

#[tokio::test]
async fn create_then_lookup_round_trips_and_the_same_key_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let key = fresh_key();
    let identity = create_identity(server.http, &key).await;
    assert!(identity
        .iter()
        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    let id = String::from_utf8(identity.to_vec()).unwrap();
    let (status, body) = http_json(server.http, "GET", &format!("/identity/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "identity": id, "publicKey": B64.encode(key.public_key().as_bytes()) })
    );
    // Registering the same key again gives the same identity.
    assert_eq!(create_identity(server.http, &key).await, identity);
    // Another key gets another identity.
    assert_ne!(create_identity(server.http, &fresh_key()).await, identity);

    let (status, info) = http_json(server.http, "GET", "/server-info", None).await;
    assert_eq!(status, 200);
    assert_eq!(info["publicKey"], B64.encode(server.public_key.as_bytes()));
    assert_eq!(info["serverGroup"], "01");

    let (status, body) = http_json(server.http, "GET", "/identity/ZZZZZZZZ", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "unknown identity");
}

#[tokio::test]
async fn every_malformed_request_gets_400_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let key = B64.encode(fresh_key().public_key().as_bytes());
    let (_, step1) = http_json(
        server.http,
        "POST",
        "/identity/create",
        Some(json!({ "publicKey": key })),
    )
    .await;
    let token = step1["token"].as_str().unwrap().to_owned();

    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("empty body", Vec::new()),
        ("JSON array", b"[1,2]".to_vec()),
        ("missing publicKey", json!({}).to_string().into_bytes()),
        (
            "publicKey not a string",
            json!({ "publicKey": 5 }).to_string().into_bytes(),
        ),
        (
            "bad base64",
            json!({ "publicKey": "!!!!" }).to_string().into_bytes(),
        ),
        (
            "31-byte key",
            json!({ "publicKey": B64.encode([7_u8; 31]) })
                .to_string()
                .into_bytes(),
        ),
        (
            "33-byte key",
            json!({ "publicKey": B64.encode([7_u8; 33]) })
                .to_string()
                .into_bytes(),
        ),
        (
            "low-order key",
            json!({ "publicKey": B64.encode([0_u8; 32]) })
                .to_string()
                .into_bytes(),
        ),
        (
            "token without response",
            json!({ "publicKey": key, "token": token })
                .to_string()
                .into_bytes(),
        ),
        (
            "response without token",
            json!({ "publicKey": key, "response": B64.encode([0_u8; 32]) })
                .to_string()
                .into_bytes(),
        ),
        (
            "bad token base64",
            json!({ "publicKey": key, "token": "%%", "response": B64.encode([0_u8; 32]) })
                .to_string()
                .into_bytes(),
        ),
        (
            "short response",
            json!({ "publicKey": key, "token": token, "response": B64.encode([0_u8; 16]) })
                .to_string()
                .into_bytes(),
        ),
    ];
    for (what, body) in bodies {
        let (status, text) = http(server.http, "POST", "/identity/create", Some(&body)).await;
        assert_eq!(status, 400, "{what}: {text}");
        let reason: Value = serde_json::from_str(&text).unwrap();
        assert!(
            reason["error"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {text}"
        );
    }
    for path in [
        "/identity/abc",
        "/identity/abcdefgh",
        "/identity/ABCDEFGHI",
        "/identity/AB%20DEFGH",
    ] {
        let (status, body) = http_json(server.http, "GET", path, None).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["error"].as_str().is_some(), "{path}");
    }
}

#[tokio::test]
async fn wrong_or_reused_responses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let ck = fresh_key();
    let public = B64.encode(ck.public_key().as_bytes());
    let step1 = |public: String| async move {
        let (status, body) = http_json(
            server.http,
            "POST",
            "/identity/create",
            Some(json!({ "publicKey": public })),
        )
        .await;
        assert_eq!(status, 200);
        let token = body["token"].as_str().unwrap().to_owned();
        let challenge = PublicKey::from_slice(
            &B64.decode(body["tokenRespKeyPub"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        (token, challenge)
    };
    let (token, challenge) = step1(public.clone()).await;
    // A response computed with another key.
    let wrong = client_response(&fresh_key(), &challenge, &B64.decode(&token).unwrap()).unwrap();
    let (status, body) = http_json(
        server.http,
        "POST",
        "/identity/create",
        Some(json!({ "publicKey": public, "token": token, "response": B64.encode(wrong) })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "response does not match");
    // The token was used up by that attempt, even with the right response now.
    let right = client_response(&ck, &challenge, &B64.decode(&token).unwrap()).unwrap();
    let (status, body) = http_json(
        server.http,
        "POST",
        "/identity/create",
        Some(json!({ "publicKey": public, "token": token, "response": B64.encode(right) })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A token issued for another key.
    let (token, challenge) = step1(B64.encode(fresh_key().public_key().as_bytes())).await;
    let response = client_response(&ck, &challenge, &B64.decode(&token).unwrap()).unwrap();
    let (status, body) = http_json(
        server.http,
        "POST",
        "/identity/create",
        Some(json!({ "publicKey": public, "token": token, "response": B64.encode(response) })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "token was issued for another public key");
    // Oversize bodies are refused before parsing.
    let big = vec![b' '; 10_000];
    let (status, _) = http(server.http, "POST", "/identity/create", Some(&big)).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ServerProcess::start(dir.path(), &[]);
    let request = |addr: std::net::SocketAddr| {
        format!(
            "GET /server-info HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://app.example\r\nConnection: close\r\n\r\n"
        )
    };
    let response = http_raw(plain.http, &request(plain.http), b"").await;
    assert_eq!(response.status, 200);
    assert!(!response
        .head
        .to_ascii_lowercase()
        .contains("access-control-allow-origin"));
    drop(plain);
    let dir = tempfile::tempdir().unwrap();
    let cors = ServerProcess::start(dir.path(), &["--cors-origin", "https://app.example"]);
    let response = http_raw(cors.http, &request(cors.http), b"").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{}",
        response.head
    );
}

#[tokio::test]
async fn identities_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(dir.path(), &[]);
    let key = fresh_key();
    let identity = create_identity(first.http, &key).await;
    first.kill();
    let second = ServerProcess::start(dir.path(), &[]);
    let id = String::from_utf8(identity.to_vec()).unwrap();
    let (status, body) = http_json(second.http, "GET", &format!("/identity/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["publicKey"], B64.encode(key.public_key().as_bytes()));
}

/// Spec §12: the bulk lookup current clients use, over real HTTP: known identities with the
/// fields they read, unknown ones left out, a 400 with a reason for every malformed request,
/// at most 256 names, and POST only.
#[tokio::test]
async fn fetch_bulk_answers_known_identities_and_refuses_malformed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let (ka, kb) = (fresh_key(), fresh_key());
    let a = String::from_utf8(create_identity(server.http, &ka).await.to_vec()).unwrap();
    let b = String::from_utf8(create_identity(server.http, &kb).await.to_vec()).unwrap();
    let (status, body) = http_json(
        server.http,
        "POST",
        "/identity/fetch_bulk",
        Some(json!({ "identities": [b, "NOBODY00", a] })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let entry = |id: &str, key: &ClientKey| {
        json!({
            "identity": id,
            "type": 0,
            "publicKey": B64.encode(key.public_key().as_bytes()),
            "state": 0,
            "featureMask": 2,
        })
    };
    assert_eq!(
        body,
        json!({ "identities": [entry(&b, &kb), entry(&a, &ka)] })
    );

    for (request, needle) in [
        (&b"{"[..], "malformed request"),
        (b"{\"identities\": 3}", "malformed request"),
        (b"{\"identities\": [\"toolongname\"]}", "identities[0]"),
    ] {
        let (status, text) = http(server.http, "POST", "/identity/fetch_bulk", Some(request)).await;
        assert_eq!(status, 400, "{text}");
        let reason: Value = serde_json::from_str(&text).unwrap();
        assert!(reason["error"].as_str().unwrap().contains(needle), "{text}");
    }
    let names = vec!["NOBODY00"; 257];
    let (status, body) = http_json(
        server.http,
        "POST",
        "/identity/fetch_bulk",
        Some(json!({ "identities": names })),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("at most 256"),
        "{body}"
    );
    let (status, _) = http(server.http, "GET", "/identity/fetch_bulk", None).await;
    assert_eq!(status, 405);
}
