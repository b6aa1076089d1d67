//! The Worker isolate's V8 heap through `wrangler dev`'s inspector proxy (the Chrome DevTools
//! Protocol over a WebSocket): how much the heap holds, and a forced full collection. The soak
//! uses it to tell memory workerd retains from garbage V8 has not collected yet
//! (RELIABILITY.md "Soak"). `mediator-worker/tools/heap.mjs` does the same by hand, with heap
//! snapshots.
//!
//! Connecting a DevTools client makes wrangler send `Debugger.disable` to the isolate: the
//! debugger stays off, nothing else in the isolate changes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::error::HarnessError;
use super::http::http_request;

/// How long one inspector conversation may take.
const WITHIN: Duration = Duration::from_secs(20);

/// `Runtime.getHeapUsage`: the isolate's V8 heap, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes of live and not yet collected objects.
    pub used: u64,
    /// Bytes V8 has committed for its heap.
    pub total: u64,
    /// Bytes of `ArrayBuffer` backing stores (outside the heap proper).
    pub backing: u64,
}

/// One conversation with the isolate's inspector.
struct Session {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

fn failed(what: &str, detail: impl std::fmt::Display) -> HarnessError {
    HarnessError::Http {
        request: format!("inspector {what}"),
        detail: detail.to_string(),
    }
}

impl Session {
    /// Connects to the Worker's target behind wrangler's inspector proxy on `port`.
    async fn open(port: u16) -> Result<Self, HarnessError> {
        let addr = format!("127.0.0.1:{port}");
        let list = http_request(&addr, "GET", "/json", None, WITHIN)
            .await?
            .json("GET /json")?;
        let url = list
            .as_array()
            .and_then(|targets| targets.first())
            .and_then(|target| target.get("webSocketDebuggerUrl"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| failed("targets", format!("no target in {list}")))?
            .to_owned();
        let (ws, _) = tokio::time::timeout(WITHIN, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| failed("connect", "timed out"))?
            .map_err(|err| failed("connect", err))?;
        Ok(Self { ws, next: 1 })
    }

    /// Sends `method` and returns its result; events and other answers are skipped.
    async fn call(&mut self, method: &str) -> Result<serde_json::Value, HarnessError> {
        let id = self.next;
        self.next += 1;
        let request = serde_json::json!({ "id": id, "method": method, "params": {} });
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .map_err(|err| failed(method, err))?;
        let answer = async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message.map_err(|err| failed(method, err))? else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if value.get("id").and_then(serde_json::Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(error) = value.get("error") {
                    return Err(failed(method, error));
                }
                return Ok(value.get("result").cloned().unwrap_or_default());
            }
            Err(failed(method, "the inspector closed"))
        };
        tokio::time::timeout(WITHIN, answer)
            .await
            .map_err(|_| failed(method, "no answer"))?
    }

    async fn heap_usage(&mut self) -> Result<HeapUsage, HarnessError> {
        let result = self.call("Runtime.getHeapUsage").await?;
        let field = |name: &str| {
            result
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .map_or(0, |v| {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let bytes = v.max(0.0) as u64;
                    bytes
                })
        };
        Ok(HeapUsage {
            used: field("usedSize"),
            total: field("totalSize"),
            backing: field("backingStorageSize"),
        })
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The Worker isolate's heap right now (no collection).
pub async fn heap_usage(port: u16) -> Result<HeapUsage, HarnessError> {
    let mut session = Session::open(port).await?;
    let usage = session.heap_usage().await;
    session.close().await;
    usage
}

/// The heap before and after `HeapProfiler.collectGarbage` (a full, compacting collection of
/// the Worker's isolate).
pub async fn collect_garbage(port: u16) -> Result<(HeapUsage, HeapUsage), HarnessError> {
    let mut session = Session::open(port).await?;
    let result = async {
        let before = session.heap_usage().await?;
        session.call("HeapProfiler.collectGarbage").await?;
        let after = session.heap_usage().await?;
        Ok((before, after))
    }
    .await;
    session.close().await;
    result
}
