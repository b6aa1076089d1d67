//! Key derivation and ID backup commands.

use serde_json::{json, Value};
use tandem_shared::crypto::SecretKey;
use tandem_shared::id_backup;
use tandem_shared::keys::DeviceGroupKey;

use super::{decode_hex32, ShimError};

/// `group-keys <dgk-hex>` → the five subkeys and `DGPK.public`, hex.
pub fn group_keys(dgk_hex: &str) -> Result<Value, ShimError> {
    let keys = DeviceGroupKey::from_bytes(decode_hex32("dgk", dgk_hex)?).derive_keys();
    Ok(json!({
        "dgpk": hex::encode(keys.dgpk.as_bytes()),
        "dgpkPublic": hex::encode(keys.dgpk_public.as_bytes()),
        "dgrk": hex::encode(keys.dgrk.as_bytes()),
        "dgdik": hex::encode(keys.dgdik.as_bytes()),
        "dgsddk": hex::encode(keys.dgsddk.as_bytes()),
        "dgtsk": hex::encode(keys.dgtsk.as_bytes()),
    }))
}

/// `dgk <ck-secret-hex>` → the device group key derived from the identity key.
pub fn dgk(ck_hex: &str) -> Result<Value, ShimError> {
    let ck = SecretKey::from_bytes(decode_hex32("ck", ck_hex)?);
    Ok(json!({ "dgk": hex::encode(DeviceGroupKey::from_client_key(&ck).as_bytes()) }))
}

/// `id-backup-decode <backup> <password>` → `{identity, ck}`.
pub fn id_backup_decode(backup: &str, password: &str) -> Result<Value, ShimError> {
    let restored = id_backup::decode(backup, password)?;
    Ok(json!({ "identity": restored.identity, "ck": hex::encode(restored.ck.as_bytes()) }))
}

/// `id-backup-encode <identity> <ck-hex> <password>` → `{backup}` (random salt from the OS).
pub fn id_backup_encode(identity: &str, ck_hex: &str, password: &str) -> Result<Value, ShimError> {
    let ck = SecretKey::from_bytes(decode_hex32("ck", ck_hex)?);
    let backup = id_backup::encode(identity, &ck, password, &mut rand::rngs::OsRng)?;
    Ok(json!({ "backup": backup }))
}
