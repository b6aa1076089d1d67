//! An outbound TCP socket (`connect()` from `cloudflare:sockets`) driven through its JS streams
//! with one reader and one writer for its whole life.
//!
//! The `worker` crate's `Socket` implements `AsyncRead`/`AsyncWrite` by taking the stream's
//! reader (or writer) lock for every single read (or write) and releasing it afterwards; in the
//! CSP echo profile `getReader`, `releaseLock` and `getWriter` were ≈ 20 % of the Worker's CPU
//! per echo (docs/worker.md "CSP echo"). The chat server connection needs nothing of
//! `AsyncRead`: whole chunks as they come, and writes in order.

use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, worker_sys};

/// A socket from `connect()`, not yet known to be open.
pub(crate) struct TcpSocket {
    inner: worker_sys::Socket,
}

/// The socket's readable side, locked to this reader.
pub(crate) struct Reader {
    reader: web_sys::ReadableStreamDefaultReader,
    /// `"done"` and `"value"`, made once: every read result is looked up by them.
    done: JsValue,
    value: JsValue,
}

/// The socket's writable side, locked to this writer.
pub(crate) struct Writer {
    writer: web_sys::WritableStreamDefaultWriter,
}

/// Starts connecting to `host:port` (plain TCP, no half-open), like `Socket::builder().connect`.
pub(crate) fn connect(host: &str, port: u16) -> Result<TcpSocket, JsValue> {
    let address = js_sys::Object::new();
    js_sys::Reflect::set(&address, &"hostname".into(), &host.into())?;
    js_sys::Reflect::set(&address, &"port".into(), &f64::from(port).into())?;
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"allowHalfOpen".into(), &false.into())?;
    js_sys::Reflect::set(&options, &"secureTransport".into(), &"off".into())?;
    let inner = worker_sys::connect(address.into(), options.into())?;
    Ok(TcpSocket { inner })
}

impl TcpSocket {
    /// Resolves when the connection is open; `Err` when it could not be opened.
    pub(crate) async fn opened(&self) -> Result<(), ()> {
        let promise = self.inner.opened().map_err(|_| ())?;
        JsFuture::from(promise).await.map(|_| ()).map_err(|_| ())
    }

    /// Locks both streams for the connection's life.
    pub(crate) fn lock_streams(&self) -> Option<(Reader, Writer)> {
        let readable = self.inner.readable().ok()?;
        let writable = self.inner.writable().ok()?;
        let reader = readable
            .get_reader()
            .dyn_into::<web_sys::ReadableStreamDefaultReader>()
            .ok()?;
        let writer = writable.get_writer().ok()?;
        Some((
            Reader {
                reader,
                done: JsValue::from_str("done"),
                value: JsValue::from_str("value"),
            },
            Writer { writer },
        ))
    }

    /// Closes both directions; a socket already closed or failed is fine.
    pub(crate) async fn close(&self) {
        if let Ok(promise) = self.inner.close() {
            if let Err(err) = JsFuture::from(promise).await {
                worker::console_debug!("closing chat server socket: {err:?}");
            }
        }
    }
}

impl Reader {
    /// The next chunk the server sent; `Ok(None)` when it closed its side, `Err` when the read
    /// failed.
    pub(crate) async fn read(&self) -> Result<Option<Vec<u8>>, ()> {
        let result = JsFuture::from(self.reader.read()).await.map_err(|_| ())?;
        let done = js_sys::Reflect::get(&result, &self.done).map_err(|_| ())?;
        if done.is_truthy() {
            return Ok(None);
        }
        let value = js_sys::Reflect::get(&result, &self.value).map_err(|_| ())?;
        let bytes = value.dyn_into::<js_sys::Uint8Array>().map_err(|_| ())?;
        Ok(Some(bytes.to_vec()))
    }
}

impl Writer {
    /// Writes `bytes` (copied into a JS `Uint8Array`); resolves when the stream took them.
    pub(crate) async fn write(&self, bytes: &[u8]) -> Result<(), ()> {
        let chunk = js_sys::Uint8Array::from(bytes);
        JsFuture::from(self.writer.write_with_chunk(&chunk))
            .await
            .map(|_| ())
            .map_err(|_| ())
    }
}
