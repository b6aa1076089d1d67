//! [`RawSocket`]: a mediator WebSocket without a session, for bytes no well-behaved device sends
//! (frames before the handshake, hand-made containers).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::device::{close_frame, open_ws, Ws};
use super::error::HarnessError;

/// A bare WebSocket to a mediator path.
#[derive(Debug)]
pub struct RawSocket {
    name: String,
    ws: Ws,
}

impl RawSocket {
    /// Opens the WebSocket at `url`.
    pub async fn connect(url: &str, name: impl Into<String>) -> Result<Self, HarnessError> {
        let name = name.into();
        let ws = open_ws(url, &name).await?;
        Ok(Self { name, ws })
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), HarnessError> {
        self.send(Message::binary(bytes)).await
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), HarnessError> {
        self.send(Message::text(text)).await
    }

    /// Sends any message.
    pub async fn send(&mut self, message: Message) -> Result<(), HarnessError> {
        self.ws
            .send(message)
            .await
            .map_err(|err| HarnessError::WebSocket {
                device: self.name.clone(),
                action: "send",
                detail: err.to_string(),
            })
    }

    /// The next binary message (pings are skipped); an error if the socket closes first.
    pub async fn next_binary(&mut self, within: Duration) -> Result<Vec<u8>, HarnessError> {
        self.next_of("a binary message", within, |message| match message {
            Message::Binary(bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .await
    }

    /// The next text message (binary messages and pings are skipped); an error if the socket
    /// closes first.
    pub async fn next_text(&mut self, within: Duration) -> Result<String, HarnessError> {
        self.next_of("a text message", within, |message| match message {
            Message::Text(text) => Some(text.to_string()),
            _ => None,
        })
        .await
    }

    /// The next message `pick` takes; the others are skipped, a close is an error.
    async fn next_of<T>(
        &mut self,
        awaited: &str,
        within: Duration,
        pick: impl Fn(Message) -> Option<T>,
    ) -> Result<T, HarnessError> {
        loop {
            match self.next(within).await? {
                Message::Close(frame) => {
                    return Err(HarnessError::Closed {
                        device: self.name.clone(),
                        awaited: awaited.into(),
                        code: frame.map_or(1005, |f| u16::from(f.code)),
                        origin: "remote",
                        recent: String::new(),
                    })
                }
                message => {
                    if let Some(picked) = pick(message) {
                        return Ok(picked);
                    }
                }
            }
        }
    }

    /// The code the mediator closes the socket with (binary messages before it are skipped;
    /// 1006 if the stream ends without a close frame).
    pub async fn close_code(&mut self, within: Duration) -> Result<u16, HarnessError> {
        loop {
            match self.next(within).await {
                Ok(Message::Close(frame)) => {
                    let _ = self.ws.flush().await;
                    return Ok(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(HarnessError::WebSocket {
                    action: "receive", ..
                }) => return Ok(1006),
                Err(err) => return Err(err),
            }
        }
    }

    /// Closes with `code`.
    pub async fn close(mut self, code: u16) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.ws.close(Some(close_frame(code))),
        )
        .await;
    }

    async fn next(&mut self, within: Duration) -> Result<Message, HarnessError> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Ok(Some(Ok(message))) => Ok(message),
            Ok(Some(Err(err))) => Err(HarnessError::WebSocket {
                device: self.name.clone(),
                action: "receive",
                detail: err.to_string(),
            }),
            Ok(None) => Err(HarnessError::WebSocket {
                device: self.name.clone(),
                action: "receive",
                detail: "the stream ended".into(),
            }),
            Err(_) => Err(HarnessError::Timeout {
                device: self.name.clone(),
                awaited: "a message".into(),
                after: within,
                recent: String::new(),
            }),
        }
    }
}
