//! Key material: the device group key and its subkeys (spec §1.1, DESIGN §2.2), the client key's
//! CSP derivations (spec §1.3), the per-peer end-to-end keys and their cache, and the mediator URL
//! (spec §1.2).

mod client;
mod device_group;
mod identity;
mod peer;
mod url;

pub(crate) use client::csp_dir_key;
pub use client::{ClientKey, IDENTITY_LEN};
pub use device_group::{DeviceGroupKey, DeviceGroupKeys};
pub use identity::is_valid_identity;
pub use peer::{PeerKeyCache, PeerKeys};
pub use url::{mediator_path, server_group_spellings, ClientUrlInfo, UrlError};
