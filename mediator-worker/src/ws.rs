//! Server-side WebSocket plumbing shared by the Durable Objects.

use worker::wasm_bindgen::JsCast;
use worker::{js_sys, web_sys, WebSocket, WebSocketPair, WebsocketEvent};

/// A new WebSocket pair whose server end is accepted (non-hibernating) with `binaryType =
/// "arraybuffer"`. Since `compatibility_date` 2026-03-17 the default is `"blob"`: binary frames
/// then arrive as `Blob`, which the `worker` crate's `MessageEvent::bytes` reads as an empty byte
/// array (DESIGN.md §6).
pub(crate) fn accept_pair() -> worker::Result<(WebSocket, WebSocket)> {
    let pair = WebSocketPair::new()?;
    AsRef::<web_sys::WebSocket>::as_ref(&pair.server)
        .set_binary_type(web_sys::BinaryType::Arraybuffer);
    pair.server.accept()?;
    Ok((pair.client, pair.server))
}

/// One inbound frame.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A binary frame, as the JS `ArrayBuffer` it arrived in.
    Binary(js_sys::ArrayBuffer),
    /// A text frame (not part of d2m).
    Text,
    /// Neither text nor `ArrayBuffer`: a `Blob`, when `binaryType` was not set before `accept()`.
    Unreadable,
    /// The peer closed, or the socket failed.
    Closed,
}

/// Sorts a WebSocket event into a [`Frame`].
pub(crate) fn frame_of(event: worker::Result<WebsocketEvent>) -> Frame {
    match event {
        Ok(WebsocketEvent::Message(msg)) => {
            let data = AsRef::<web_sys::MessageEvent>::as_ref(&msg).data();
            if data.is_string() {
                return Frame::Text;
            }
            match data.dyn_into::<js_sys::ArrayBuffer>() {
                Ok(buffer) => Frame::Binary(buffer),
                Err(_) => Frame::Unreadable,
            }
        }
        Ok(WebsocketEvent::Close(_)) | Err(_) => Frame::Closed,
    }
}

/// Sends a JS `ArrayBuffer` as one binary frame without copying it through wasm memory.
pub(crate) fn send_buffer(ws: &WebSocket, buffer: &js_sys::ArrayBuffer) -> worker::Result<()> {
    AsRef::<web_sys::WebSocket>::as_ref(ws)
        .send_with_array_buffer(buffer)
        .map_err(worker::Error::from)
}

/// Closes with an application close code, ignoring a socket that is already gone.
pub(crate) fn close(ws: &WebSocket, code: u16, reason: &str) {
    if let Err(err) = ws.close(Some(code), Some(reason)) {
        worker::console_debug!("close {code} on a socket already gone: {err}");
    }
}
