//! Compiles `proto/*.proto` (the single source of the protobuf field numbers) into Rust types with
//! prost, and writes the encoded `FileDescriptorSet` so tools (the conformance shim) can map the
//! same messages to JSON without a second copy of the schema.

use std::{env, fs, path::PathBuf};

/// Protobuf fields of protocol version 23 that no Tandem code reads or sets: Threema Work's
/// (only Work clients set them) and the deprecated notification sound overrides.
const NATIVE_ONLY_FIELDS: [&str; 5] = [
    ".sync.Contact.work_last_full_sync_at",
    ".sync.Contact.work_availability_status",
    ".sync.UserProfile.work_availability_status",
    ".sync.Contact.deprecated_notification_sound_policy_override",
    ".sync.Group.deprecated_notification_sound_policy_override",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = fs::read_dir("proto")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("descriptor_set.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    // Left out of the wasm builds (the browser package has a size budget; the Worker never
    // decodes d2d): there they are skipped on decode like any unknown field, which changes
    // nothing since no code reads them (docs/protocol.md "Protocol version 23").
    for field in NATIVE_ONLY_FIELDS {
        config.field_attribute(field, "#[cfg(not(target_arch = \"wasm32\"))]");
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
