//! [`Balancer`]: a round-robin TCP forwarder, what HAProxy or nginx `stream` do in front of
//! several chat-server nodes (docs/chat-server.md "Several nodes"). Each accepted connection
//! goes to the next node and is copied both ways until either side closes.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::error::HarnessError;

/// A listening forwarder; dropping it stops accepting (open connections run until they end).
#[derive(Debug)]
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free port of 127.0.0.1 and spreads connections over `backends` in turn.
    pub async fn start(backends: Vec<SocketAddr>) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| HarnessError::io("bind the balancer", err))?;
        let addr = listener
            .local_addr()
            .map_err(|err| HarnessError::io("balancer address", err))?;
        let task = tokio::spawn(async move {
            let mut turn = 0_usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let Some(&backend) = backends.get(turn % backends.len().max(1)) else {
                    return;
                };
                turn = turn.wrapping_add(1);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
