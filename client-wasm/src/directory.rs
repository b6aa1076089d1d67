//! The identity directory over `fetch` (DESIGN §2.5), below `{directoryUrl}/directory/`: the
//! chat server's key, identity creation with the token challenge, and public-key lookups.
//! `fetch` and its `Response` are `gloo_net::http`'s, which binds the global `fetch`, so the same
//! code runs in a page and in a worker; bodies stay the browser's `JSON` (no serde_json in the
//! package). The request itself is a `web_sys::Request` handed to gloo-net: its
//! `RequestBuilder` parses every URL again for query parameters (`Url`, `URLSearchParams`),
//! which the directory never has, for 1 675 B more gzipped (docs/client.md "gloo-net").

use gloo_net::http::Request;
use js_sys::JSON;
use rand_core::CryptoRngCore;
use tandem_shared::app::Identity;
use tandem_shared::crypto::PublicKey;
use tandem_shared::directory::client_response;
use tandem_shared::encoding::{base64_decode, base64_encode};
use tandem_shared::keys::ClientKey;
use wasm_bindgen::JsValue;
use web_sys::RequestInit;

use crate::error::ClientError;
use crate::js::{get_string, Obj};

/// The chat server as the directory describes it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The chat server's permanent public key.
    pub public_key: PublicKey,
    /// The server group for the mediator URL.
    pub server_group: String,
}

/// Answer of a lookup.
#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    /// The identity's public key.
    Found(PublicKey),
    /// The directory does not know it (404).
    NotFound,
}

/// The directory below a base URL.
#[derive(Debug, Clone)]
pub struct Directory {
    base: String,
}

/// What a gloo-net failure says: the JS error's message (`Failed to fetch`, …) without its
/// class name, as the directory's errors said it before.
fn describe(e: &gloo_net::Error) -> String {
    match e {
        gloo_net::Error::JsError(js) => js.message.clone(),
        other => other.to_string(),
    }
}

fn key_from_b64(url: &str, field: &str, text: &str) -> Result<PublicKey, ClientError> {
    let bytes = base64_decode(text).ok();
    let array: Option<[u8; 32]> = bytes.and_then(|b| b.try_into().ok());
    array.map(PublicKey).ok_or_else(|| ClientError::Directory {
        url: url.to_owned(),
        reason: format!("{field} is not a base64 32-byte key"),
    })
}

impl Directory {
    /// The directory at `{base}/directory/`.
    #[must_use]
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/directory/{path}", self.base)
    }

    /// One request; `Ok(None)` for 404, the parsed JSON body otherwise.
    async fn request(
        &self,
        path: &str,
        body: Option<&JsValue>,
    ) -> Result<Option<JsValue>, ClientError> {
        let url = self.url(path);
        let err = |reason: String| ClientError::Directory {
            url: url.clone(),
            reason,
        };
        let init = RequestInit::new();
        if let Some(body) = body {
            init.set_method("POST");
            let text = JSON::stringify(body).map_err(|e| err(crate::js::describe(&e)))?;
            init.set_body(&text);
            let headers = Obj::new().set("Content-Type", "application/json").build();
            init.set_headers(&headers);
        }
        let request: Request = web_sys::Request::new_with_str_and_init(&url, &init)
            .map_err(|e| err(crate::js::describe(&e)))?
            .into();
        let response = request
            .send()
            .await
            .map_err(|e| err(format!("cannot be reached ({})", describe(&e))))?;
        if response.status() == 404 {
            return Ok(None);
        }
        let text = response.text().await.map_err(|e| err(describe(&e)))?;
        let json = JSON::parse(&text).ok();
        if !response.ok() {
            let reason = json
                .as_ref()
                .and_then(|j| get_string(j, "error"))
                .unwrap_or(text);
            return Err(err(format!("HTTP {}: {reason}", response.status())));
        }
        json.map(Some)
            .ok_or_else(|| err("answered with something that is not JSON".into()))
    }

    /// `GET server-info`.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        let url = self.url("server-info");
        let json =
            self.request("server-info", None)
                .await?
                .ok_or_else(|| ClientError::Directory {
                    url: url.clone(),
                    reason: "not found (is the directory URL right?)".into(),
                })?;
        let key = get_string(&json, "publicKey").unwrap_or_default();
        let public_key = key_from_b64(&url, "publicKey", &key)?;
        let server_group =
            get_string(&json, "serverGroup").ok_or_else(|| ClientError::Directory {
                url,
                reason: "serverGroup missing".into(),
            })?;
        Ok(ServerInfo {
            public_key,
            server_group,
        })
    }

    /// `GET identity/{ID}`.
    pub async fn lookup(&self, identity: Identity) -> Result<Lookup, ClientError> {
        let path = format!("identity/{identity}");
        let url = self.url(&path);
        match self.request(&path, None).await? {
            None => Ok(Lookup::NotFound),
            Some(json) => {
                let key = get_string(&json, "publicKey").unwrap_or_default();
                Ok(Lookup::Found(key_from_b64(&url, "publicKey", &key)?))
            }
        }
    }

    /// Creates an identity for a fresh client key: token, challenge response, identity.
    pub async fn create_identity(
        &self,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Identity, ClientKey), ClientError> {
        let ck = ClientKey::new(tandem_shared::crypto::SecretKey::generate(rng));
        let url = self.url("identity/create");
        let err = |reason: &str| ClientError::Directory {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        let public_key = base64_encode(ck.public_key().as_bytes());
        let first = Obj::new().set("publicKey", public_key.as_str()).build();
        let challenge = self
            .request("identity/create", Some(&first))
            .await?
            .ok_or_else(|| err("not found (is the directory URL right?)"))?;
        let token = get_string(&challenge, "token").ok_or_else(|| err("token missing"))?;
        let token_bytes = base64_decode(&token).map_err(|_| err("token is not base64"))?;
        let resp_key = key_from_b64(
            &url,
            "tokenRespKeyPub",
            &get_string(&challenge, "tokenRespKeyPub").unwrap_or_default(),
        )?;
        let response = client_response(&ck, &resp_key, &token_bytes)
            .map_err(|_| err("tokenRespKeyPub is a low-order key"))?;
        let second = Obj::new()
            .set("publicKey", public_key.as_str())
            .set("token", token.as_str())
            .set("response", base64_encode(&response).as_str())
            .build();
        let created = self
            .request("identity/create", Some(&second))
            .await?
            .ok_or_else(|| err("not found (is the directory URL right?)"))?;
        let identity = get_string(&created, "identity")
            .ok_or_else(|| err("identity missing"))?
            .parse::<Identity>()
            .map_err(|_| err("answered with an invalid identity"))?;
        Ok((identity, ck))
    }
}
