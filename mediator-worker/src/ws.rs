//! Server-side WebSocket plumbing shared by the Durable Objects.

use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, web_sys, WebSocket, WebSocketPair, WebsocketEvent};

/// A new WebSocket pair whose server end has `binaryType = "arraybuffer"`, to be accepted as
/// hibernatable by the Durable Object. Since `compatibility_date` 2026-03-17 the default is
/// `"blob"`, and a binary frame as `Blob` cannot be read synchronously (DESIGN.md §6).
pub(crate) fn pair() -> worker::Result<(WebSocket, WebSocket)> {
    let pair = WebSocketPair::new()?;
    AsRef::<web_sys::WebSocket>::as_ref(&pair.server)
        .set_binary_type(web_sys::BinaryType::Arraybuffer);
    Ok((pair.client, pair.server))
}

/// A new WebSocket pair whose server end is accepted (non-hibernating, the bench relay) with
/// `binaryType = "arraybuffer"`.
pub(crate) fn accept_pair() -> worker::Result<(WebSocket, WebSocket)> {
    let (client, server) = pair()?;
    server.accept()?;
    Ok((client, server))
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
}

/// Sorts a message's data (`MessageEvent.data`, or the hibernation handler's argument).
pub(crate) fn frame_of_data(data: &JsValue) -> Frame {
    if data.is_string() {
        return Frame::Text;
    }
    match data.dyn_ref::<js_sys::ArrayBuffer>() {
        Some(buffer) => Frame::Binary(buffer.clone()),
        None => Frame::Unreadable,
    }
}

/// Sorts a WebSocket event of an `accept()`-ed socket; `None` when it closed or failed.
pub(crate) fn frame_of(event: worker::Result<WebsocketEvent>) -> Option<Frame> {
    match event {
        Ok(WebsocketEvent::Message(msg)) => Some(frame_of_data(
            &AsRef::<web_sys::MessageEvent>::as_ref(&msg).data(),
        )),
        Ok(WebsocketEvent::Close(_)) | Err(_) => None,
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
    close_raw(ws.as_ref(), code, reason);
}

/// [`close`] for the runtime's socket type.
pub(crate) fn close_raw(ws: &web_sys::WebSocket, code: u16, reason: &str) {
    if let Err(err) = ws.close_with_code_and_reason(code, reason) {
        worker::console_debug!("close {code} on a socket already gone: {err:?}");
    }
}
