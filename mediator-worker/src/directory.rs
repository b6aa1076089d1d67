//! `/directory/*`: the identity directory, forwarded to the chat server (DESIGN.md §2.5).
//!
//! The Worker stands between devices and the chat server, and DESIGN.md §1 keeps device
//! addresses from the chat server: on Cloudflare every request carries `cf-connecting-ip`,
//! `x-forwarded-for`, `x-real-ip`, `cf-ipcountry`, cookies and more. So only the headers the
//! directory needs are passed on (an allowlist, not a blocklist: a header Cloudflare adds
//! tomorrow stays here too), bodies are read up to a bound, and identity creation is
//! rate-limited per client address here, where the address is known (docs/worker.md "Limits").

use futures_util::StreamExt;
use worker::{console_warn, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::config;

/// Request headers passed on to the directory; every other header stays at the Worker.
const FORWARDED: &[&str] = &["accept", "content-type"];

/// Longest request body passed on. The largest legitimate one is a `fetch_bulk` of 256 IDs
/// (≈ 3.6 KiB of JSON); 64 KiB leaves room without letting a client make the Worker buffer
/// megabytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How much of a body without a declared length is read (and dropped) past [`MAX_BODY`] before
/// the 413: stopping in the middle of a request body breaks the connection it came on (under
/// `wrangler dev` the next request on it fails with 503 "Your worker restarted mid-request"),
/// so a body that ends soon after the bound is read to its end. Past this, reading stops.
const MAX_DRAINED: usize = 1024 * 1024;

/// The rate limiter binding (`wrangler.toml` `[[ratelimits]]`) for identity creation, keyed
/// by the client's address.
const CREATION_LIMITER: &str = "IDENTITY_CREATION";

/// Var: the origins (`scheme://host[:port]`, comma-separated) whose pages may use the directory
/// from a browser, besides the Worker's own origin (the web app). Empty by default: npm users on
/// another origin ask the operator to add theirs (docs/client.md "Directory and CORS").
pub(crate) const ORIGINS_VAR: &str = "TANDEM_DIRECTORY_ORIGINS";

/// Whether a request may use the directory, by its `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginCheck {
    /// No `Origin`: not a browser page (Threema's apps, tools), or a same-origin GET.
    None,
    /// The Worker's own origin: the web app.
    Same,
    /// Another origin listed in [`ORIGINS_VAR`]: answered with CORS headers.
    Allowed,
    /// Another origin, not listed: refused with 403 (readable by that page, so it can say why).
    Refused,
}

/// Checks `origin` against the Worker's own origin `own` and the allowed list `allowed`
/// (the [`ORIGINS_VAR`] value). Origins compare exactly, as browsers send them. A browser's
/// `Sec-Fetch-Site: same-origin` (`fetch_site`; a header no page can set) also counts as the
/// own origin: behind a reverse proxy that rewrites `Host` the Worker's URL is not the page's.
pub(crate) fn check_origin(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    own: &str,
    allowed: &str,
) -> OriginCheck {
    match origin {
        None => OriginCheck::None,
        Some(origin) if origin == own || fetch_site == Some("same-origin") => OriginCheck::Same,
        Some(origin)
            if allowed
                .split(',')
                .any(|a| a.trim() == origin && !origin.is_empty()) =>
        {
            OriginCheck::Allowed
        }
        Some(_) => OriginCheck::Refused,
    }
}

/// The one POST that is not identity creation. Every other POST counts against the creation
/// limit, whatever its spelling (`/identity/create/`, `//identity/create`, percent-encoding):
/// the limit cannot be stepped around by a path the chat server might read the same way.
const LOOKUP_POST: &str = "/identity/fetch_bulk";

/// Whether a request header goes on to the chat server.
pub(crate) fn forwarded(name: &str) -> bool {
    FORWARDED.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Whether a directory request counts against the identity creation limit.
pub(crate) fn counts_as_creation(method: &Method, rest: &str) -> bool {
    *method == Method::Post && rest != LOOKUP_POST
}

/// Passes a `/directory/*` request on to the chat server's HTTP directory.
pub(crate) async fn forward(mut req: Request, env: &Env, rest: &str) -> worker::Result<Response> {
    let Ok(base) = env.var(config::DIRECTORY_URL_VAR) else {
        return Response::error("directory not configured", 503);
    };
    let method = req.method();
    let url = req.url()?;
    let origin = req.headers().get("origin")?;
    let allowed = env
        .var(ORIGINS_VAR)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let fetch_site = req.headers().get("sec-fetch-site")?;
    let check = check_origin(
        origin.as_deref(),
        fetch_site.as_deref(),
        &url.origin().ascii_serialization(),
        &allowed,
    );
    if method == Method::Options {
        // Preflights pass for every origin, so that the request itself can be refused with a
        // reason the page can read (a failed preflight only shows "Failed to fetch").
        return with_cors(Response::empty()?.with_status(204), origin.as_deref(), true);
    }
    if check == OriginCheck::Refused {
        let origin = origin.unwrap_or_default();
        let refused = Response::error(
            format!(
                "this directory does not serve pages from {origin}: its operator can add the \
                 origin to {ORIGINS_VAR}"
            ),
            403,
        )?;
        return with_cors(refused, Some(&origin), false);
    }
    if counts_as_creation(&method, rest) && !creation_allowed(&req, env).await? {
        return Response::error(
            "too many identities created from this address; try again in a minute",
            429,
        );
    }
    let target = config::directory_target(&base.to_string(), rest, url.query().unwrap_or(""));

    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        if forwarded(&name) {
            headers.set(&name, &value)?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if !matches!(method, Method::Get | Method::Head) {
        let Some(body) = read_body(&mut req).await? else {
            return Response::error(format!("request body over {MAX_BODY} bytes"), 413);
        };
        init.with_body(Some(
            worker::js_sys::Uint8Array::from(body.as_slice()).into(),
        ));
    }
    let upstream = Request::new_with_init(&target, &init)?;
    let response = match Fetch::Request(upstream).send().await {
        Ok(response) => response,
        Err(err) => Response::error(format!("directory unreachable: {err}"), 502)?,
    };
    match check {
        OriginCheck::Allowed => with_cors(response, origin.as_deref(), false),
        _ => Ok(response),
    }
}

/// `response` with `Access-Control-Allow-Origin: origin` (and, for a preflight, the methods and
/// headers the directory takes); `Vary: Origin` either way, since the answer depends on it.
fn with_cors(
    response: Response,
    origin: Option<&str>,
    preflight: bool,
) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in response.headers().entries() {
        headers.set(&name, &value)?;
    }
    headers.set("vary", "Origin")?;
    if let Some(origin) = origin {
        headers.set("access-control-allow-origin", origin)?;
        if preflight {
            headers.set("access-control-allow-methods", "GET, POST")?;
            headers.set("access-control-allow-headers", "content-type")?;
            headers.set("access-control-max-age", "600")?;
        }
    }
    Ok(response.with_headers(headers))
}

/// The body, or `None` past [`MAX_BODY`]: a declared length is checked first, and a body
/// without one (chunked) is read only up to the bound.
async fn read_body(req: &mut Request) -> worker::Result<Option<Vec<u8>>> {
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|len| len.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Ok(None);
    }
    let Ok(mut stream) = req.stream() else {
        // No body at all.
        return Ok(Some(Vec::new()));
    };
    let mut body = Vec::new();
    let mut seen = 0_usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > MAX_BODY.saturating_add(MAX_DRAINED) {
            return Ok(None);
        }
        if seen <= MAX_BODY {
            body.extend_from_slice(&chunk);
        }
    }
    Ok((seen <= MAX_BODY).then_some(body))
}

/// Asks the creation limiter about this client's address. Without the binding (plain workerd,
/// docs/worker.md "Self-hosting") creation is not limited here, and that is logged.
async fn creation_allowed(req: &Request, env: &Env) -> worker::Result<bool> {
    let Ok(limiter) = env.rate_limiter(CREATION_LIMITER) else {
        console_warn!("no {CREATION_LIMITER} rate limiter bound: identity creation is not limited");
        return Ok(true);
    };
    // Cloudflare sets it on every request; without it (local tools) all share one bucket.
    let address = req.headers().get("cf-connecting-ip")?.unwrap_or_default();
    Ok(limiter.limit(address).await?.success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_directory_headers_are_forwarded() {
        for name in ["Accept", "content-type", "CONTENT-TYPE"] {
            assert!(forwarded(name), "{name}");
        }
        for name in [
            "cf-connecting-ip",
            "x-forwarded-for",
            "x-real-ip",
            "cf-ipcountry",
            "cf-ray",
            "true-client-ip",
            "cookie",
            "authorization",
            "user-agent",
            "referer",
            "origin",
            "host",
            "content-length",
            "transfer-encoding",
        ] {
            assert!(!forwarded(name), "{name}");
        }
    }

    #[test]
    fn origins_are_checked_exactly() {
        let own = "https://mediator.example";
        let allowed = "https://app.example, http://localhost:5173";
        let check = |origin, site| check_origin(origin, site, own, allowed);
        assert_eq!(check(None, None), OriginCheck::None);
        assert_eq!(check(Some(own), None), OriginCheck::Same);
        assert_eq!(
            check(Some("http://proxy.example"), Some("same-origin")),
            OriginCheck::Same,
            "a browser's same-origin request behind a reverse proxy"
        );
        for origin in ["https://app.example", "http://localhost:5173"] {
            assert_eq!(
                check(Some(origin), Some("cross-site")),
                OriginCheck::Allowed
            );
        }
        for origin in [
            "https://app.example.evil",
            "https://evil.example",
            "http://app.example",
            "https://app.example:444",
            "null",
            "",
        ] {
            assert_eq!(
                check(Some(origin), Some("cross-site")),
                OriginCheck::Refused,
                "{origin}"
            );
            assert_eq!(
                check(Some(origin), Some("same-site")),
                OriginCheck::Refused,
                "{origin}"
            );
        }
        assert_eq!(
            check_origin(Some("https://app.example"), None, own, ""),
            OriginCheck::Refused
        );
    }

    #[test]
    fn every_post_but_the_bulk_lookup_counts_as_creation() {
        for rest in [
            "/identity/create",
            "/identity/create/",
            "//identity/create",
            "/identity%2Fcreate",
            "/IDENTITY/CREATE",
            "",
        ] {
            assert!(counts_as_creation(&Method::Post, rest), "{rest}");
        }
        assert!(!counts_as_creation(&Method::Post, "/identity/fetch_bulk"));
        assert!(!counts_as_creation(&Method::Get, "/identity/create"));
        assert!(!counts_as_creation(&Method::Get, "/identity/ECHOECHO"));
    }
}
