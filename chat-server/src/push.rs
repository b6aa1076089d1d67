//! Waking device groups (docs/chat-server.md "Push", docs/protocol.md "CSP on demand").
//!
//! A Tandem device registers the mediator's push URL as a push token of type 0xa0. When a
//! message is stored for an identity that no session receives (on this node), the storage
//! thread names the identity here; this task POSTs to the identity's URL (empty body), then
//! looks again after 2 s, 4 s, 8 s, … (at most every 5 min) and POSTs again while messages still
//! wait and still nobody receives. One schedule per identity, however many messages arrive.
//!
//! The URLs come from clients, so the server POSTs only to the origins its operator allowed
//! (`--push-origin`): otherwise any client could make it send requests into the network it
//! runs in. Redirects are not followed. Without an allowed origin, push is off and tokens are
//! ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::registry::Registry;
use crate::store::Store;
use crate::types::Identity;

/// Identities waiting to be scheduled; when full, a name is dropped (the next message names it
/// again, and the mediator's poll bounds the wait).
pub const WAKE_CAPACITY: usize = 4096;
/// The first look again after a push; doubles up to [`MAX_RECHECK`].
const FIRST_RECHECK: Duration = Duration::from_secs(2);
/// The longest wait between two pushes for one identity.
const MAX_RECHECK: Duration = Duration::from_secs(300);
/// One POST may take this long.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// POSTs in flight at once.
const MAX_IN_FLIGHT: usize = 32;
/// Longest push URL (a CSP push token is at most 255 bytes, spec §9.4).
pub const MAX_PUSH_URL_LEN: usize = 255;

/// Why a push URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushUrlError {
    /// Not UTF-8, not a URL, or longer than 255 bytes.
    #[error("not a push URL")]
    Malformed,
    /// Not under any `--push-origin`.
    #[error("push URL origin not allowed")]
    NotAllowed,
}

/// One allowed origin: scheme and host, and the port unless any port is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// The origins the server may POST to (`--push-origin`, e.g. `https://mediator.example.org` or
/// `http://127.0.0.1`, which allows any port of that host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOrigins(Vec<Origin>);

impl PushOrigins {
    /// Parses `scheme://host[:port]` entries (http or https, nothing after the authority).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let url = reqwest::Url::parse(entry).map_err(|e| format!("{entry}: {e}"))?;
                let host = url.host_str().ok_or_else(|| format!("{entry}: no host"))?;
                if !matches!(url.scheme(), "http" | "https") || url.path() != "/" {
                    return Err(format!("{entry}: expected http(s)://host[:port]"));
                }
                if url.query().is_some() || !url.username().is_empty() {
                    return Err(format!("{entry}: expected http(s)://host[:port]"));
                }
                Ok(Origin {
                    scheme: url.scheme().to_owned(),
                    host: host.to_owned(),
                    port: url.port(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether push is on at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL a token carries, if it may be POSTed to.
    pub fn check(&self, token: &[u8]) -> Result<String, PushUrlError> {
        if token.len() > MAX_PUSH_URL_LEN {
            return Err(PushUrlError::Malformed);
        }
        let text = std::str::from_utf8(token).map_err(|_| PushUrlError::Malformed)?;
        let url = reqwest::Url::parse(text).map_err(|_| PushUrlError::Malformed)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(PushUrlError::Malformed);
        }
        let allowed = self.0.iter().any(|o| {
            url.scheme() == o.scheme
                && url.host_str() == Some(o.host.as_str())
                && o.port.is_none_or(|port| url.port() == Some(port))
        });
        if allowed {
            Ok(text.to_owned())
        } else {
            Err(PushUrlError::NotAllowed)
        }
    }
}

/// Where the storage threads name identities nobody receives for.
pub type WakeSender = mpsc::Sender<Identity>;

/// Starts the push task; the storage threads send it identities over the returned channel's
/// sender (create it with [`channel`]).
pub fn spawn(
    store: Store,
    registry: Arc<Registry>,
    mut names: mpsc::Receiver<Identity>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "push client could not be built; push is off");
                return;
            }
        };
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (done_tx, mut done) = mpsc::unbounded_channel::<(Identity, bool)>();
        let mut schedule: HashMap<Identity, Entry> = HashMap::new();
        loop {
            let next = schedule
                .values()
                .filter(|e| !e.running)
                .map(|e| e.due)
                .min();
            tokio::select! {
                name = names.recv() => match name {
                    None => return,
                    Some(identity) => {
                        schedule.entry(identity).or_insert(Entry {
                            due: Instant::now(),
                            recheck: FIRST_RECHECK,
                            running: false,
                        });
                    }
                },
                Some((identity, again)) = done.recv() => {
                    if again {
                        if let Some(entry) = schedule.get_mut(&identity) {
                            entry.running = false;
                            entry.due = Instant::now() + entry.recheck;
                            entry.recheck = (entry.recheck * 2).min(MAX_RECHECK);
                        }
                    } else {
                        schedule.remove(&identity);
                    }
                }
                () = sleep_until(next) => {}
            }
            let now = Instant::now();
            for (identity, entry) in &mut schedule {
                if entry.running || entry.due > now {
                    continue;
                }
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    break;
                };
                entry.running = true;
                let (store, registry, client, done) = (
                    store.clone(),
                    Arc::clone(&registry),
                    client.clone(),
                    done_tx.clone(),
                );
                let identity = *identity;
                tokio::spawn(async move {
                    let again = push_once(&store, &registry, &client, identity).await;
                    let _ = done.send((identity, again));
                    drop(permit);
                });
            }
        }
    })
}

/// The channel between the storage threads and [`spawn`].
#[must_use]
pub fn channel() -> (WakeSender, mpsc::Receiver<Identity>) {
    mpsc::channel(WAKE_CAPACITY)
}

struct Entry {
    due: Instant,
    recheck: Duration,
    running: bool,
}

/// One look: POSTs if messages wait for `identity`, nobody here receives them and it has a
/// push URL. Whether to look again later.
async fn push_once(
    store: &Store,
    registry: &Registry,
    client: &reqwest::Client,
    identity: Identity,
) -> bool {
    if registry.receiver(&identity).is_some() {
        return false;
    }
    let target = match store.push_target(identity).await {
        Ok(target) => target,
        Err(e) => {
            warn!(error = %e, "push target lookup failed");
            return true;
        }
    };
    let Some(url) = target.url else {
        return false;
    };
    if target.queued == 0 {
        return false;
    }
    match client
        .post(&url)
        .header(reqwest::header::CONTENT_LENGTH, "0")
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => {
            debug!(status = %response.status(), "pushed");
        }
        // A 404 means the mediator does not know the token (another key, expired, the group
        // gone): looking again costs little and a device may register a new one meanwhile.
        Ok(response) => debug!(status = %response.status(), "push refused"),
        Err(e) => debug!(error = %e, "push failed"),
    }
    true
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(entries: &[&str]) -> PushOrigins {
        PushOrigins::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn only_urls_under_an_allowed_origin_pass() {
        let o = origins(&["https://mediator.example.org", "http://127.0.0.1"]);
        let ok = "https://mediator.example.org/push/abc";
        assert_eq!(o.check(ok.as_bytes()), Ok(ok.to_owned()));
        assert!(
            o.check(b"http://127.0.0.1:8787/push/abc").is_ok(),
            "any port"
        );
        assert_eq!(
            o.check(b"http://mediator.example.org/push/abc"),
            Err(PushUrlError::NotAllowed),
            "scheme counts"
        );
        assert_eq!(
            o.check(b"https://mediator.example.org.evil.example/push"),
            Err(PushUrlError::NotAllowed)
        );
        assert_eq!(
            o.check(b"http://169.254.169.254/latest/meta-data"),
            Err(PushUrlError::NotAllowed)
        );
        assert_eq!(
            o.check(b"https://user@mediator.example.org/push/abc"),
            Err(PushUrlError::Malformed)
        );
        assert_eq!(o.check(b"not a url"), Err(PushUrlError::Malformed));
        assert_eq!(o.check(&[0xff, 0xfe]), Err(PushUrlError::Malformed));
        let long = format!("https://mediator.example.org/push/{}", "a".repeat(255));
        assert_eq!(o.check(long.as_bytes()), Err(PushUrlError::Malformed));
    }

    #[test]
    fn a_fixed_port_allows_that_port_only() {
        let o = origins(&["http://127.0.0.1:8787"]);
        assert!(o.check(b"http://127.0.0.1:8787/push/x").is_ok());
        assert_eq!(
            o.check(b"http://127.0.0.1:8788/push/x"),
            Err(PushUrlError::NotAllowed)
        );
    }

    #[test]
    fn origins_are_origins() {
        for bad in [
            "ftp://host",
            "https://host/path",
            "https://host?q",
            "nothing",
        ] {
            assert!(PushOrigins::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(origins(&[]).is_empty());
    }
}
