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
use serde::Deserialize;
use serde_json::json;
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::csp::is_valid_identity;
use tandem_shared::directory::verify_response;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::store::Store;

use super::{fetch_bulk, Directory, IdentityRecord, TokenError, Tokens};

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
    let lock = || {
        inner
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    match (request.token, request.response) {
        (None, None) => {
            let issued = lock().issue(public_key, Instant::now(), &mut OsRng);
            let (token, challenge_public) = issued.map_err(|e| {
                warn!("directory token refused: {e}");
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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
            let challenge =
                lock()
                    .redeem(&token, &public_key, Instant::now())
                    .map_err(|e| match e {
                        TokenError::Full => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                        _ => error(StatusCode::FORBIDDEN, e.to_string()),
                    })?;
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
    match state.inner.directory.public_key(&identity) {
        Some(key) => Json(json!({
            "identity": id,
            "publicKey": B64.encode(key.as_bytes()),
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "unknown identity").into_response(),
    }
}

async fn fetch_bulk_handler(State(state): State<HttpState>, body: Bytes) -> Response {
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
