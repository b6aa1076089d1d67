//! The identity directory over `fetch` (DESIGN §2.5), below `{directoryUrl}/directory/`: the
//! chat server's key, identity creation with the token challenge, and public-key lookups.

use js_sys::{Promise, JSON};
use rand_core::CryptoRngCore;
use tandem_shared::app::Identity;
use tandem_shared::crypto::PublicKey;
use tandem_shared::directory::client_response;
use tandem_shared::encoding::{base64_decode, base64_encode};
use tandem_shared::keys::ClientKey;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{RequestInit, Response};

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

fn fetch(url: &str, init: &RequestInit) -> Result<Promise, ClientError> {
    let global = js_sys::global();
    let fetch = js_sys::Reflect::get(&global, &JsValue::from_str("fetch"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or_else(|| ClientError::Directory {
            url: url.to_owned(),
            reason: "fetch is not available in this context".into(),
        })?;
    let promise = fetch
        .call2(&global, &JsValue::from_str(url), init)
        .map_err(|e| ClientError::Directory {
            url: url.to_owned(),
            reason: crate::js::describe(&e),
        })?;
    promise
        .dyn_into::<Promise>()
        .map_err(|_| ClientError::Directory {
            url: url.to_owned(),
            reason: "fetch did not return a promise".into(),
        })
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
        let response: Response = JsFuture::from(fetch(&url, &init)?)
            .await
            .map_err(|e| err(format!("cannot be reached ({})", crate::js::describe(&e))))?
            .dyn_into()
            .map_err(|_| err("fetch did not return a Response".into()))?;
        if response.status() == 404 {
            return Ok(None);
        }
        let text = JsFuture::from(response.text().map_err(|e| err(crate::js::describe(&e)))?)
            .await
            .map_err(|e| err(crate::js::describe(&e)))?;
        let text = text.as_string().unwrap_or_default();
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
