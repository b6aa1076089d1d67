//! The directory's HTTP API (DESIGN §2.5), JSON with base64 for bytes.
//!
//! Routes: `POST /identity/create` (two steps), `GET /identity/{ID}`, `POST /identity/fetch_bulk`
//! (protocol version 23, [`super::bulk`]), `GET /server-info`.
//!
//! Status codes: 200 success; 400 malformed request (JSON, base64, lengths, identity syntax,
//! low-order key, incomplete step two, more than 256 names in a bulk lookup); 403 well-formed but refused (unknown, used or expired
//! token, token of another key, wrong response); 404 unknown identity or path; 413 body over
//! [`MAX_BODY`]; 503 too many pending tokens; 500 storage failure. Every error body is
//! `{"error": reason}`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::csp::is_valid_identity;
use tandem_shared::directory::verify_response;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::store::{PendingToken, Store, StoreError};
use crate::types::{now_ms, Identity};

use super::{fetch_bulk, Directory, IdentityRecord, TokenError, Tokens, TOKEN_LEN, TOKEN_TTL};

/// Largest request body.
pub(super) const MAX_BODY: usize = 4096;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    directory: Arc<Directory>,
    tokens: Mutex<Tokens>,
    server_public_key: PublicKey,
    server_group: String,
}

impl HttpState {
    /// State over the store and directory of a running server.
    #[must_use]
    pub fn new(
        store: Store,
        directory: Arc<Directory>,
        server_public_key: PublicKey,
        server_group: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                directory,
                tokens: Mutex::new(Tokens::default()),
                server_public_key,
                server_group,
            }),
        }
    }
}

impl Inner {
    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Issues a creation token: in memory with one node, in the database with several (step
    /// two may reach another node).
    async fn issue(&self, public_key: PublicKey) -> Result<([u8; TOKEN_LEN], PublicKey), ApiError> {
        if !self.store.shares_tokens() {
            return self
                .tokens()
                .issue(public_key, Instant::now(), &mut OsRng)
                .map_err(token_error);
        }
        let mut token = [0_u8; TOKEN_LEN];
        OsRng.fill_bytes(&mut token);
        let challenge = SecretKey::generate(&mut OsRng);
        let challenge_public = challenge.public_key();
        let stored = self
            .store
            .issue_token(PendingToken {
                token,
                public_key,
                challenge: *challenge.as_bytes(),
                issued_at_ms: now_ms(),
            })
            .await
            .map_err(storage_error)?;
        if !stored {
            return Err(token_error(TokenError::Full));
        }
        Ok((token, challenge_public))
    }

    /// Takes a token (single use, even when the key does not match) and returns its challenge
    /// secret.
    async fn redeem(&self, token: Vec<u8>, public_key: &PublicKey) -> Result<SecretKey, ApiError> {
        if !self.store.shares_tokens() {
            return self
                .tokens()
                .redeem(&token, public_key, Instant::now())
                .map_err(token_error);
        }
        let pending = self
            .store
            .redeem_token(token)
            .await
            .map_err(storage_error)?
            .filter(|p| {
                now_ms().saturating_sub(p.issued_at_ms)
                    < u64::try_from(TOKEN_TTL.as_millis()).unwrap_or(u64::MAX)
            })
            .ok_or_else(|| token_error(TokenError::Unknown))?;
        if !tandem_shared::crypto::ct_eq(pending.public_key.as_bytes(), public_key.as_bytes()) {
            return Err(token_error(TokenError::OtherKey));
        }
        Ok(SecretKey::from_bytes(pending.challenge))
    }

    /// An identity's public key: the cached directory, else the database (another node may
    /// have created it since this one loaded its copy).
    async fn public_key(&self, identity: &Identity) -> Result<Option<PublicKey>, ApiError> {
        if let Some(key) = self.directory.public_key(identity) {
            return Ok(Some(key));
        }
        let record = self.store.lookup(*identity).await.map_err(storage_error)?;
        Ok(record.map(|r| {
            let key = r.public_key;
            self.directory.insert(r);
            key
        }))
    }
}

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Full => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => error(StatusCode::FORBIDDEN, e.to_string()),
    }
}

fn storage_error(e: StoreError) -> ApiError {
    warn!("directory storage failure: {e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
}

/// The directory routes, with CORS for `cors_origins` (`*` = any; empty = no CORS headers).
pub fn router(state: HttpState, cors_origins: &[String]) -> Router {
    let router = Router::new()
        .route("/identity/create", post(create))
        .route("/identity/fetch_bulk", post(fetch_bulk_handler))
        .route("/identity/{id}", get(lookup))
        .route("/server-info", get(server_info))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path").into_response() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    if cors_origins.is_empty() {
        return router;
    }
    let origin = if cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    router.layer(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([axum::http::header::CONTENT_TYPE]),
    )
}

/// A refused request: its status and the reason for the `{"error": reason}` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.reason }))).into_response()
    }
}

fn error(status: StatusCode, reason: impl Into<String>) -> ApiError {
    ApiError {
        status,
        reason: reason.into(),
    }
}

fn bad(reason: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, reason)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    public_key: String,
    token: Option<String>,
    response: Option<String>,
}

fn decode_b64(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(value)
        .map_err(|e| bad(format!("{field}: invalid base64 ({e})")))
}

fn decode_exact<const N: usize>(field: &str, value: &str) -> Result<[u8; N], ApiError> {
    let bytes = decode_b64(field, value)?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| bad(format!("{field}: expected {N} bytes, got {len}")))
}

async fn create(State(state): State<HttpState>, body: Bytes) -> Response {
    match create_inner(&state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(state: &HttpState, body: &[u8]) -> Result<Response, ApiError> {
    let request: CreateRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let public_key = PublicKey(decode_exact::<32>("publicKey", &request.public_key)?);
    if SecretKey::generate(&mut OsRng)
        .box_key_contributory(&public_key)
        .is_err()
    {
        return Err(bad("publicKey: low-order point"));
    }
    let inner = &state.inner;
    match (request.token, request.response) {
        (None, None) => {
            let (token, challenge_public) = inner.issue(public_key).await.inspect_err(|e| {
                warn!("directory token refused: {}", e.reason);
            })?;
            Ok(Json(json!({
                "token": B64.encode(token),
                "tokenRespKeyPub": B64.encode(challenge_public.as_bytes()),
            }))
            .into_response())
        }
        (Some(token), Some(response)) => {
            let token = decode_b64("token", &token)?;
            let response = decode_exact::<32>("response", &response)?;
            let challenge = inner.redeem(token.clone(), &public_key).await?;
            let matches = verify_response(&challenge, &public_key, &token, &response)
                .map_err(|_| bad("publicKey: low-order point"))?;
            if !matches {
                return Err(error(StatusCode::FORBIDDEN, "response does not match"));
            }
            let created = inner.store.create_identity(public_key).await.map_err(|e| {
                warn!("identity creation failed: {e}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
            })?;
            if !created.existed {
                inner.directory.insert(IdentityRecord {
                    identity: created.identity,
                    public_key,
                    device_cookie: None,
                    cookie_changed: false,
                });
                info!("identity created");
            }
            Ok(Json(json!({
                "success": true,
                "identity": String::from_utf8_lossy(&created.identity),
                "serverGroup": inner.server_group,
            }))
            .into_response())
        }
        _ => Err(bad("token and response must be sent together")),
    }
}

async fn lookup(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let Some(identity) = <[u8; 8]>::try_from(id.as_bytes())
        .ok()
        .filter(is_valid_identity)
    else {
        return bad("identity must be 8 characters [0-9A-Z] (a leading * is allowed)")
            .into_response();
    };
    let key = match state.inner.public_key(&identity).await {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    match key {
        Some(key) => Json(json!({
            "identity": id,
            "publicKey": B64.encode(key.as_bytes()),
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "unknown identity").into_response(),
    }
}

async fn fetch_bulk_handler(State(state): State<HttpState>, body: Bytes) -> Response {
    // Identities another node created are read into the cache first; the lookup itself stays
    // synchronous (and malformed requests are refused by it without touching the database).
    if let Ok(names) = super::bulk::requested(&body) {
        for identity in names {
            if let Err(e) = state.inner.public_key(&identity).await {
                return e.into_response();
            }
        }
    }
    match fetch_bulk(&body, |identity| state.inner.directory.public_key(identity)) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => bad(e.to_string()).into_response(),
    }
}

async fn server_info(State(state): State<HttpState>) -> Response {
    Json(json!({
        "publicKey": B64.encode(state.inner.server_public_key.as_bytes()),
        "serverGroup": state.inner.server_group,
    }))
    .into_response()
}
