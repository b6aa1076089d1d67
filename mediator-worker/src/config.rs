//! Worker configuration read from `wrangler.toml` vars (DESIGN.md §2.6: the server group in
//! `ClientUrlInfo` selects the chat server address).

use std::fmt;

use tandem_shared::keys::server_group_spellings;
use tandem_shared::mediator::{GroupConfig, PushKey};

/// Name of the var holding the chat server address of server group `group`.
pub(crate) fn chat_server_var(group: &str) -> String {
    format!("CHAT_SERVER_{group}")
}

/// The vars tried, in order, for the chat server of `group`: one per spelling of
/// [`server_group_spellings`] (a decimal group also finds its zero-padded var).
pub(crate) fn chat_server_vars(group: &str) -> Vec<String> {
    server_group_spellings(group)
        .iter()
        .map(|spelling| chat_server_var(spelling))
        .collect()
}

/// Var holding the base URL the `/directory/*` routes are forwarded to.
pub(crate) const DIRECTORY_URL_VAR: &str = "DIRECTORY_URL";

/// Var that enables the bench relay and the inspection routes when set to `on`.
pub(crate) const DEV_ROUTES_VAR: &str = "TANDEM_DEV_ROUTES";

/// Var overriding [`GroupConfig::max_queue_len`] (tests reach 4114 with small queues).
pub(crate) const MAX_QUEUE_LEN_VAR: &str = "TANDEM_MAX_QUEUE_LEN";

/// Var overriding [`GroupConfig::max_transaction_ttl_s`].
pub(crate) const MAX_TRANSACTION_TTL_VAR: &str = "TANDEM_MAX_TRANSACTION_TTL_S";

/// Var overriding [`GroupConfig::wake_poll_ms`], in seconds (tests lose a push on purpose).
pub(crate) const WAKE_POLL_VAR: &str = "TANDEM_WAKE_POLL_S";

/// Secret (64 hex digits) that seals push tokens (docs/worker.md "Waking a group"). Without it
/// devices are given no push URL and keep their chat server connections open.
pub(crate) const PUSH_KEY_VAR: &str = "TANDEM_PUSH_KEY";

/// The Worker's public origin for push URLs (`https://mediator.example.org`); without it, the
/// origin of the device's WebSocket request.
pub(crate) const PUBLIC_URL_VAR: &str = "TANDEM_PUBLIC_URL";

/// Why a group limit var was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LimitError {
    /// Not a decimal number in the allowed range.
    #[error("{var} must be a whole number from 1 to {max}")]
    Range {
        /// The var's name.
        var: &'static str,
        /// The largest allowed value.
        max: u64,
    },
}

/// The group limits: `GroupConfig::default()` with the vars that are set (`var` looks one up).
pub(crate) fn group_config(
    var: impl Fn(&str) -> Option<String>,
) -> Result<GroupConfig, LimitError> {
    let mut config = GroupConfig::default();
    if let Some(value) = var(MAX_QUEUE_LEN_VAR) {
        config.max_queue_len = parse_limit(MAX_QUEUE_LEN_VAR, &value, u64::MAX)?;
    }
    if let Some(value) = var(MAX_TRANSACTION_TTL_VAR) {
        let ttl = parse_limit(MAX_TRANSACTION_TTL_VAR, &value, u64::from(u32::MAX))?;
        config.max_transaction_ttl_s = u32::try_from(ttl).map_err(|_| LimitError::Range {
            var: MAX_TRANSACTION_TTL_VAR,
            max: u64::from(u32::MAX),
        })?;
    }
    if let Some(value) = var(WAKE_POLL_VAR) {
        let seconds = parse_limit(WAKE_POLL_VAR, &value, u64::MAX / 1000)?;
        config.wake_poll_ms = seconds * 1000;
    }
    Ok(config)
}

/// A var or secret of the Worker's environment, as text (secrets and vars are both strings on
/// the `env` object; `wrangler dev --var` sets vars, `wrangler secret put` secrets).
pub(crate) fn env_text(env: &worker::Env, name: &str) -> Option<String> {
    env.secret(name)
        .or_else(|_| env.var(name))
        .ok()
        .map(|value| value.to_string())
}

/// The push key: `Ok(None)` when none is set, an error when the var is not 64 lowercase hex
/// digits (the caller reports it and runs without push: devices then keep their chat server
/// connections open, which costs money, not data).
pub(crate) fn push_key(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<PushKey>, PushKeyError> {
    match var(PUSH_KEY_VAR) {
        Some(value) if !value.trim().is_empty() => {
            PushKey::from_hex(&value).map(Some).ok_or(PushKeyError)
        }
        _ => Ok(None),
    }
}

/// `TANDEM_PUSH_KEY` is set but not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{PUSH_KEY_VAR} must be 64 lowercase hex digits (push is off)")]
pub(crate) struct PushKeyError;

/// The origin of push URLs: `TANDEM_PUBLIC_URL` if set, else `scheme://host` of `request_url`.
pub(crate) fn push_origin(public_url: Option<String>, request_url: &worker::Url) -> Option<String> {
    if let Some(url) = public_url.filter(|u| !u.trim().is_empty()) {
        return Some(url.trim().trim_end_matches('/').to_owned());
    }
    let host = request_url.host_str()?;
    let scheme = match request_url.scheme() {
        "ws" | "http" => "http",
        _ => "https",
    };
    Some(match request_url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

fn parse_limit(var: &'static str, value: &str, max: u64) -> Result<u64, LimitError> {
    let value = value.trim();
    let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    parsed
        .filter(|&n| (1..=max).contains(&n))
        .ok_or(LimitError::Range { var, max })
}

/// Why a configured chat server address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AddressError {
    /// No `:port` suffix (or an IPv6 literal without brackets).
    #[error("chat server address must be host:port or [ipv6]:port")]
    Shape,
    /// The host part is empty.
    #[error("chat server host is empty")]
    EmptyHost,
    /// The port is not a number in 1..=65535.
    #[error("chat server port must be 1..=65535")]
    Port,
}

/// A chat server's TCP address as given to `connect()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatServerAddr {
    /// Hostname or IP literal (IPv6 without brackets).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
}

impl ChatServerAddr {
    /// Parses `host:port` or `[ipv6]:port`.
    pub(crate) fn parse(s: &str) -> Result<Self, AddressError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or(AddressError::Shape)?;
            let port = after.strip_prefix(':').ok_or(AddressError::Shape)?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(AddressError::Shape)?;
            if host.contains(':') {
                return Err(AddressError::Shape);
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(AddressError::EmptyHost);
        }
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AddressError::Port);
        }
        let port: u16 = port.parse().map_err(|_| AddressError::Port)?;
        if port == 0 {
            return Err(AddressError::Port);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ChatServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The forwarded URL for directory path `rest` (starting with `/` or empty) and `query`
/// (without `?`, possibly empty) below `base`.
pub(crate) fn directory_target(base: &str, rest: &str, query: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = if rest.is_empty() { "/" } else { rest };
    if query.is_empty() {
        format!("{base}{rest}")
    } else {
        format!("{base}{rest}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_hostname_and_ipv6() {
        assert_eq!(
            ChatServerAddr::parse("127.0.0.1:5222").unwrap(),
            ChatServerAddr {
                host: "127.0.0.1".into(),
                port: 5222
            }
        );
        assert_eq!(
            ChatServerAddr::parse("chat.example:443").unwrap().host,
            "chat.example"
        );
        let v6 = ChatServerAddr::parse("[::1]:5222").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:5222");
    }

    #[test]
    fn refuses_bad_addresses_with_the_reason() {
        assert_eq!(ChatServerAddr::parse("127.0.0.1"), Err(AddressError::Shape));
        assert_eq!(ChatServerAddr::parse("::1:5222"), Err(AddressError::Shape));
        assert_eq!(ChatServerAddr::parse("[::1]5222"), Err(AddressError::Shape));
        assert_eq!(ChatServerAddr::parse(":5222"), Err(AddressError::EmptyHost));
        assert_eq!(ChatServerAddr::parse("h:0"), Err(AddressError::Port));
        assert_eq!(ChatServerAddr::parse("h:65536"), Err(AddressError::Port));
        assert_eq!(ChatServerAddr::parse("h:+1"), Err(AddressError::Port));
        assert_eq!(ChatServerAddr::parse("h:"), Err(AddressError::Port));
    }

    #[test]
    fn group_config_defaults_without_vars() {
        assert_eq!(group_config(|_| None).unwrap(), GroupConfig::default());
    }

    #[test]
    fn group_config_takes_the_limit_vars() {
        let config = group_config(|name| match name {
            MAX_QUEUE_LEN_VAR => Some("50".into()),
            MAX_TRANSACTION_TTL_VAR => Some(" 3 ".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.max_queue_len, 50);
        assert_eq!(config.max_transaction_ttl_s, 3);
        assert_eq!(
            config.max_device_slots,
            GroupConfig::default().max_device_slots
        );
    }

    #[test]
    fn group_config_refuses_zero_signs_words_and_overflow() {
        for bad in ["0", "-1", "+5", "ten", "", "4294967296"] {
            let err = group_config(|name| (name == MAX_TRANSACTION_TTL_VAR).then(|| bad.into()));
            assert_eq!(
                err,
                Err(LimitError::Range {
                    var: MAX_TRANSACTION_TTL_VAR,
                    max: u64::from(u32::MAX)
                }),
                "{bad:?}"
            );
        }
        assert!(group_config(|name| (name == MAX_QUEUE_LEN_VAR).then(|| "1e3".into())).is_err());
    }

    #[test]
    fn wake_poll_and_push_vars() {
        let config = group_config(|name| (name == WAKE_POLL_VAR).then(|| "5".into())).unwrap();
        assert_eq!(config.wake_poll_ms, 5_000);
        let key = "ab".repeat(32);
        assert!(push_key(|_| Some(key.clone())).unwrap().is_some());
        assert!(push_key(|_| None).unwrap().is_none());
        assert!(push_key(|_| Some(" ".into())).unwrap().is_none());
        assert_eq!(
            push_key(|_| Some("secret".into())).unwrap_err(),
            PushKeyError
        );
    }

    #[test]
    fn push_origin_from_the_var_or_the_request() {
        let request = worker::Url::parse("http://127.0.0.1:8787/ab/cdef").unwrap();
        assert_eq!(
            push_origin(None, &request).as_deref(),
            Some("http://127.0.0.1:8787")
        );
        let tls = worker::Url::parse("https://mediator.example.org/ab/cdef").unwrap();
        assert_eq!(
            push_origin(None, &tls).as_deref(),
            Some("https://mediator.example.org")
        );
        assert_eq!(
            push_origin(Some("https://m.example/ ".into()), &request).as_deref(),
            Some("https://m.example")
        );
    }

    #[test]
    fn var_name_carries_the_server_group() {
        assert_eq!(chat_server_var("01"), "CHAT_SERVER_01");
    }

    /// Leniency: a decimal server group finds its var however many leading zeros it has.
    #[test]
    fn decimal_server_groups_find_the_zero_padded_var() {
        assert_eq!(chat_server_vars("1"), ["CHAT_SERVER_1", "CHAT_SERVER_01"]);
        assert_eq!(chat_server_vars("01"), ["CHAT_SERVER_01", "CHAT_SERVER_1"]);
        assert_eq!(chat_server_vars("ab"), ["CHAT_SERVER_ab"]);
    }

    #[test]
    fn directory_target_joins_base_path_and_query() {
        assert_eq!(
            directory_target("http://127.0.0.1:8080/", "/identity/ECHOECHO", ""),
            "http://127.0.0.1:8080/identity/ECHOECHO"
        );
        assert_eq!(
            directory_target("http://h", "/server-info", "a=1"),
            "http://h/server-info?a=1"
        );
        assert_eq!(directory_target("http://h", "", ""), "http://h/");
    }
}
