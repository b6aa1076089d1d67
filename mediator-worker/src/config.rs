//! Worker configuration read from `wrangler.toml` vars (DESIGN.md §2.6: the server group in
//! `ClientUrlInfo` selects the chat server address).

use std::fmt;

/// Name of the var holding the chat server address of server group `group`.
pub(crate) fn chat_server_var(group: &str) -> String {
    format!("CHAT_SERVER_{group}")
}

/// Var holding the base URL the `/directory/*` routes are forwarded to.
pub(crate) const DIRECTORY_URL_VAR: &str = "DIRECTORY_URL";

/// Var that enables the bench relay and the inspection routes when set to `on`.
pub(crate) const DEV_ROUTES_VAR: &str = "TANDEM_DEV_ROUTES";

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
    fn var_name_carries_the_server_group() {
        assert_eq!(chat_server_var("01"), "CHAT_SERVER_01");
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
