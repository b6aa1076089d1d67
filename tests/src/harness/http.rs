//! A minimal HTTP/1.1 client: enough for the chat server's directory and the Worker's routes.
//! The body is read by `content-length` (wrangler dev keeps connections open even after
//! `Connection: close`), else to the end of the stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::HarnessError;

/// Largest response head or body read.
const MAX_RESPONSE: usize = 1 << 20;

/// Status and body of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json(&self, request: &str) -> Result<serde_json::Value, HarnessError> {
        serde_json::from_str(&self.body).map_err(|err| HarnessError::Http {
            request: request.to_owned(),
            detail: format!("body is not JSON ({err}): {:?}", self.body),
        })
    }
}

/// One request to `host:port` (`host` as written in the `Host` header), with an optional JSON
/// body, answered within `within`.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    json_body: Option<&serde_json::Value>,
    within: Duration,
) -> Result<HttpResponse, HarnessError> {
    let request = format!("{method} http://{addr}{path}");
    let run = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let body = json_body.map(ToString::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|err| format!("write: {err}"))?;
        stream
            .write_all(body.as_bytes())
            .await
            .map_err(|err| format!("write: {err}"))?;
        read_response(&mut stream).await
    };
    match tokio::time::timeout(within, run).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(detail)) => Err(HarnessError::Http { request, detail }),
        Err(_) => Err(HarnessError::Http {
            request,
            detail: format!("no answer within {within:?}"),
        }),
    }
}

async fn read_response(stream: &mut TcpStream) -> Result<HttpResponse, String> {
    let mut raw = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if raw.len() > MAX_RESPONSE {
            return Err("response head too large".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|err| format!("read: {err}"))?;
        if n == 0 {
            return Err("connection closed inside the response head".into());
        }
        raw.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    // 204 and 304 have no body and no length (RFC 9110 §8.6): reading to the end of the
    // stream would wait for the server to close a kept-alive connection.
    let length = if matches!(status, 204 | 304) {
        Some(0)
    } else {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
    };
    let mut body = raw.get(head_end..).unwrap_or_default().to_vec();
    loop {
        if length.is_some_and(|len| body.len() >= len) || body.len() > MAX_RESPONSE {
            break;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|err| format!("read: {err}"))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    if let Some(len) = length {
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot server answering with `response` and then keeping the connection open (as
    /// wrangler dev does) or closing it.
    fn serve_once(response: &'static str, keep_open: bool) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            stream.write_all(response.as_bytes()).unwrap();
            if keep_open {
                std::thread::sleep(Duration::from_secs(10));
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_body_is_read_by_content_length_on_a_connection_left_open() {
        let addr = serve_once(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nhello and more",
            true,
        );
        let response = http_request(&addr, "GET", "/", None, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(
            response,
            HttpResponse {
                status: 404,
                body: "hello".into()
            }
        );
    }

    #[tokio::test]
    async fn without_content_length_the_body_ends_with_the_connection() {
        let addr = serve_once("HTTP/1.1 200 OK\r\n\r\n{\"a\":1}", false);
        let response = http_request(&addr, "GET", "/", None, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(response.json("GET /").unwrap()["a"], 1);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_naming_the_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let err = http_request(&addr, "GET", "/x", None, Duration::from_millis(200))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GET http://") && text.contains("/x"),
            "{text}"
        );
        assert!(text.contains("no answer within"), "{text}");
        drop(listener);
    }
}
