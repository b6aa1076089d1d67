//! `tandem-conformance`: the library's codecs and derivations for external test suites.
//!
//! Prints one JSON object on stdout and exits 0, or one line on stderr and exits 1.
//! A hex or JSON argument given as `-` is read from standard input instead (a 64 KiB container
//! is 128 KiB of hex, more than one command-line argument may hold on Linux).
//! See README.md ("Conformance shim") for every subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_tests::conformance::{run, Command};

#[derive(Debug, Parser)]
#[command(
    name = "tandem-conformance",
    version,
    about = "Tandem protocol conformance shim"
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Derive the five device group subkeys and DGPK.public from a DGK.
    GroupKeys { dgk_hex: String },
    /// Derive the DGK from the identity's secret key CK.
    Dgk { ck_secret_hex: String },
    /// Decode a whole d2m container to {"type", "payload"} JSON.
    D2mDecode { container_hex: String },
    /// Encode {"type", "payload"} JSON as a d2m container.
    D2mEncode { json: String },
    /// Decode a protobuf message (d2m.ClientUrlInfo, d2d.Envelope, d2d.DeviceInfo,
    /// d2d.SharedDeviceData, d2d.TransactionScope) to proto3 JSON.
    ProtoDecode { name: String, hex: String },
    /// Encode proto3 JSON as a protobuf message.
    ProtoEncode { name: String, json: String },
    /// Decode a CSP login extensions plaintext (the feature byte read as bits).
    CspExtensionsDecode { hex: String },
    /// Decode a CSP login-ack plaintext (16 bytes, either layout).
    CspLoginAckDecode { hex: String },
    /// Decode an ID backup.
    IdBackupDecode { backup: String, password: String },
    /// Encode an ID backup (random salt).
    IdBackupEncode {
        identity: String,
        ck_hex: String,
        password: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            print!("{err}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::FAILURE;
        }
    };
    let command = match cli.command {
        Sub::GroupKeys { dgk_hex } => Command::GroupKeys { dgk_hex },
        Sub::Dgk { ck_secret_hex } => Command::Dgk {
            ck_hex: ck_secret_hex,
        },
        Sub::D2mDecode { container_hex } => Command::D2mDecode { hex: container_hex },
        Sub::D2mEncode { json } => Command::D2mEncode { json },
        Sub::ProtoDecode { name, hex } => Command::ProtoDecode { name, hex },
        Sub::ProtoEncode { name, json } => Command::ProtoEncode { name, json },
        Sub::CspExtensionsDecode { hex } => Command::CspExtensionsDecode { hex },
        Sub::CspLoginAckDecode { hex } => Command::CspLoginAckDecode { hex },
        Sub::IdBackupDecode { backup, password } => Command::IdBackupDecode { backup, password },
        Sub::IdBackupEncode {
            identity,
            ck_hex,
            password,
        } => Command::IdBackupEncode {
            identity,
            ck_hex,
            password,
        },
    };
    let command = match command.read_stdin_arguments(&mut std::io::stdin().lock()) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("stdin: {err}");
            return ExitCode::FAILURE;
        }
    };
    match run(&command) {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}", err.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
