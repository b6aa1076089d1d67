//! [`Identity`]: an identity registered in the chat server's directory (DESIGN §2.5), its device
//! group keys derived from the identity key (DESIGN §2.2), and device configurations.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::csp::{CspClientConfig, Extensions};
use tandem_shared::d2d::{DeviceInfo, Platform};
use tandem_shared::device::DeviceConfig;
use tandem_shared::keys::{ClientKey, ClientUrlInfo, DeviceGroupKey, DeviceGroupKeys};

use super::error::HarnessError;
use super::http::http_request;

const HTTP_WAIT: Duration = Duration::from_secs(30);

/// A fresh random d2m or CSP device id (spec §2.5: a random u64 each, drawn once at join).
#[must_use]
pub fn random_device_id() -> u64 {
    OsRng.next_u64()
}

/// One identity with its keys, as every device of its group holds them.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The 8-character Threema ID the directory assigned.
    pub identity: [u8; 8],
    /// `CK`.
    pub client_key: ClientKey,
    /// The chat server's server group (from `/server-info`), part of the mediator path.
    pub server_group: String,
    /// `SK.public` from `/server-info`: the vouch is computed against it.
    pub chat_server_key: PublicKey,
    /// The device group subkeys derived from `CK`.
    pub keys: DeviceGroupKeys,
}

impl Identity {
    /// Generates `CK`, registers it through the directory at `directory` (`host:port`, both
    /// steps of `/identity/create`) and derives the device group keys.
    pub async fn create(directory: &str) -> Result<Self, HarnessError> {
        let info = get_json(directory, "/server-info").await?;
        let chat_server_key = public_key_field(&info, "publicKey", "/server-info")?;
        let server_group = info
            .get("serverGroup")
            .and_then(|g| g.as_str())
            .ok_or_else(|| bad_field("/server-info", "serverGroup", &info))?
            .to_owned();

        let client_key = ClientKey::new(SecretKey::generate(&mut OsRng));
        let public = B64.encode(client_key.public_key().as_bytes());
        let step1 = post_json(
            directory,
            "/identity/create",
            &serde_json::json!({ "publicKey": public }),
        )
        .await?;
        let token = step1
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad_field("/identity/create", "token", &step1))?
            .to_owned();
        let challenge = public_key_field(&step1, "tokenRespKeyPub", "/identity/create")?;
        let token_bytes = B64
            .decode(&token)
            .map_err(|_| bad_field("/identity/create", "token", &step1))?;
        let response =
            tandem_shared::directory::client_response(&client_key, &challenge, &token_bytes)
                .map_err(|err| HarnessError::Http {
                    request: "POST /identity/create".into(),
                    detail: format!("challenge key refused: {err}"),
                })?;
        let step2 = post_json(
            directory,
            "/identity/create",
            &serde_json::json!({
                "publicKey": public,
                "token": token,
                "response": B64.encode(response),
            }),
        )
        .await?;
        let identity: [u8; 8] = step2
            .get("identity")
            .and_then(|i| i.as_str())
            .and_then(|id| id.as_bytes().try_into().ok())
            .ok_or_else(|| bad_field("/identity/create", "identity", &step2))?;
        let keys = DeviceGroupKey::from_client_key(client_key.secret()).derive_keys();
        Ok(Self {
            identity,
            client_key,
            server_group,
            chat_server_key,
            keys,
        })
    }

    /// The identity as text.
    #[must_use]
    pub fn id_str(&self) -> String {
        String::from_utf8_lossy(&self.identity).into_owned()
    }

    /// `DGPK.public`: the device group id the mediator knows the group by.
    #[must_use]
    pub const fn group_id(&self) -> [u8; 32] {
        self.keys.dgpk_public.0
    }

    /// `/{prefix8}/{hex(ClientUrlInfo)}` (spec §1.2).
    pub fn mediator_path(&self) -> Result<String, HarnessError> {
        let info =
            ClientUrlInfo::new(self.keys.dgpk_public, &self.server_group).map_err(|err| {
                HarnessError::Http {
                    request: "mediator path".into(),
                    detail: format!("server group {:?}: {err}", self.server_group),
                }
            })?;
        Ok(format!("/{}", info.path()))
    }

    /// The WebSocket URL of this identity's group below `base` (`ws://host:port`).
    pub fn mediator_url(&self, base: &str) -> Result<String, HarnessError> {
        Ok(format!("{base}{}", self.mediator_path()?))
    }

    /// A d2m-only device (no chat server connection) labelled `label`, expecting a NEW slot,
    /// REJECT, PERSISTENT (desktop's choices, spec §3.3).
    #[must_use]
    pub fn device_config(&self, device_id: u64, label: &str) -> DeviceConfig {
        DeviceConfig::new(
            self.keys.clone(),
            device_id,
            DeviceInfo {
                platform: Platform::Desktop,
                platform_details: "tandem-tests on Linux".into(),
                app_version: "0.1.0".into(),
                label: label.into(),
            },
        )
    }

    /// [`Identity::device_config`] with a CSP login carrying `csp_device_id`.
    #[must_use]
    pub fn csp_device_config(
        &self,
        device_id: u64,
        csp_device_id: u64,
        label: &str,
    ) -> DeviceConfig {
        let mut config = self.device_config(device_id, label);
        config.csp = Some(self.csp_config(csp_device_id));
        config
    }

    /// The CSP login of one device (spec §9.3: client-info, csp-device-id,
    /// message-payload-version 1).
    #[must_use]
    pub fn csp_config(&self, csp_device_id: u64) -> CspClientConfig {
        CspClientConfig {
            identity: self.identity,
            client_key: self.client_key.clone(),
            server_public_key: self.chat_server_key,
            extensions: Extensions {
                csp_device_id: Some(csp_device_id),
                ..Extensions::new("0.1.0;Q;en/CH;tandem-tests")
            },
        }
    }
}

/// Looks up an identity's public key in the directory (`GET /identity/{ID}`).
pub async fn lookup_public_key(directory: &str, identity: &str) -> Result<PublicKey, HarnessError> {
    let path = format!("/identity/{identity}");
    let json = get_json(directory, &path).await?;
    public_key_field(&json, "publicKey", &path)
}

async fn get_json(addr: &str, path: &str) -> Result<serde_json::Value, HarnessError> {
    let response = http_request(addr, "GET", path, None, HTTP_WAIT).await?;
    expect_ok(&response, &format!("GET {path}"))?;
    response.json(&format!("GET {path}"))
}

async fn post_json(
    addr: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, HarnessError> {
    let response = http_request(addr, "POST", path, Some(body), HTTP_WAIT).await?;
    expect_ok(&response, &format!("POST {path}"))?;
    response.json(&format!("POST {path}"))
}

fn expect_ok(response: &super::http::HttpResponse, request: &str) -> Result<(), HarnessError> {
    if response.status == 200 {
        Ok(())
    } else {
        Err(HarnessError::Http {
            request: request.to_owned(),
            detail: format!("status {}: {}", response.status, response.body),
        })
    }
}

fn public_key_field(
    json: &serde_json::Value,
    field: &str,
    request: &str,
) -> Result<PublicKey, HarnessError> {
    json.get(field)
        .and_then(|v| v.as_str())
        .and_then(|text| B64.decode(text).ok())
        .and_then(|bytes| PublicKey::from_slice(&bytes))
        .ok_or_else(|| bad_field(request, field, json))
}

fn bad_field(request: &str, field: &str, json: &serde_json::Value) -> HarnessError {
    HarnessError::Http {
        request: request.to_owned(),
        detail: format!("no valid {field:?} in {json}"),
    }
}
