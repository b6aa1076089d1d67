//! `tandem-chat-server`: parses the command line, starts the server, prints where it listens and
//! its public key, and runs until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tandem_chat_server::config::Config;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    // The PostgreSQL client logs every statement with its parameters (message bodies,
    // identities) at debug: kept at warn unless a directive names it (docs/chat-server.md "Logs").
    let directives = if config.log_level.contains("tokio_postgres") {
        config.log_level.clone()
    } else {
        format!("{},tokio_postgres=warn", config.log_level)
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let running = match tandem_chat_server::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // Machine-readable start lines (tests and scripts read them): key, then both addresses.
    let mut stdout = std::io::stdout().lock();
    let printed = writeln!(
        stdout,
        "server public key: {}\ncsp listening on {}\nhttp listening on {}",
        hex::encode(running.server_public_key.as_bytes()),
        running.csp_addr,
        running.http_addr
    )
    .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = printed {
        error!(error = %e, "cannot write to stdout");
    }
    wait_for_signal().await;
    info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
