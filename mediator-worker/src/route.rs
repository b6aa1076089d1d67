//! Which handler a request path belongs to (DESIGN.md §2.6: one Worker, one origin).
//!
//! Pure so that the routing table is tested on the host; `lib.rs` only dispatches.

use tandem_shared::keys::{ClientUrlInfo, UrlError};
use tandem_shared::mediator::PUSH_PATH;

/// Prefix of the identity directory, forwarded to the chat server (DESIGN.md §2.5).
const DIRECTORY_PREFIX: &str = "/directory";
/// Prefix of the bench-only bare relay.
const BENCH_RELAY_PREFIX: &str = "/bench-relay/";
/// Prefix of the development-only group inspection route.
const DEV_GROUP_PREFIX: &str = "/_dev/group/";
/// The development-only store self-test.
const DEV_STORE_SELFTEST: &str = "/_dev/store-selftest";

/// Durable Object name of the store self-test: not 64 hex digits, so no device group can use it.
#[cfg(feature = "dev")]
pub(crate) const SELFTEST_OBJECT: &str = "store-selftest";

/// Longest bench relay room name accepted; names are only used as Durable Object names.
const MAX_BENCH_NAME_LEN: usize = 64;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// A device's mediator WebSocket (spec §1.2): `/{prefix8}/{hex(ClientUrlInfo)}`.
    Mediator(ClientUrlInfo),
    /// The path looks like a mediator path (first segment is two lowercase hex digits) but does
    /// not parse: answered 400 with the reason.
    BadMediatorPath(UrlError),
    /// `/directory/*`: the rest of the path (starting with `/`, or empty) for the chat server.
    Directory(&'a str),
    /// `/push/{token}`: the chat server wakes a device group (docs/worker.md "Waking a group").
    Push(&'a str),
    /// `/bench-relay/{name}`: the bare relay room `name` (development routes only).
    BenchRelay(&'a str),
    /// `/_dev/group/{hex(DGPK.public)}`: the group object's counters (development routes only).
    DevGroupStats(&'a str),
    /// `/_dev/group/{hex(DGPK.public)}/tamper-next`: arm `dev_tamper` (development routes only).
    DevGroupTamper(&'a str),
    /// `/_dev/store-selftest`: the SQLite store's contract checks (development routes only).
    DevStoreSelftest,
    /// Anything else (later: the web app's static assets).
    NotFound,
}

/// Classifies a request path. `dev_routes` enables the bench relay and the inspection route.
pub(crate) fn classify(path: &str, dev_routes: bool) -> Route<'_> {
    if let Some(rest) = path.strip_prefix(DIRECTORY_PREFIX) {
        if rest.is_empty() || rest.starts_with('/') {
            return Route::Directory(rest);
        }
        return Route::NotFound;
    }
    if let Some(token) = path.strip_prefix(PUSH_PATH) {
        return Route::Push(token);
    }
    if let Some(name) = path.strip_prefix(BENCH_RELAY_PREFIX) {
        return if dev_routes && is_room_name(name) {
            Route::BenchRelay(name)
        } else {
            Route::NotFound
        };
    }
    if path == DEV_STORE_SELFTEST {
        return if dev_routes {
            Route::DevStoreSelftest
        } else {
            Route::NotFound
        };
    }
    if let Some(group) = path.strip_prefix(DEV_GROUP_PREFIX) {
        if let Some(group) = group.strip_suffix("/tamper-next") {
            return if dev_routes && is_group_id_hex(group) {
                Route::DevGroupTamper(group)
            } else {
                Route::NotFound
            };
        }
        return if dev_routes && is_group_id_hex(group) {
            Route::DevGroupStats(group)
        } else {
            Route::NotFound
        };
    }
    if looks_like_mediator_path(path) {
        return match ClientUrlInfo::from_path(path) {
            Ok(info) => Route::Mediator(info),
            Err(err) => Route::BadMediatorPath(err),
        };
    }
    Route::NotFound
}

/// A first segment of one or two lowercase hex digits followed by `/` claims the mediator
/// namespace, so malformed device URLs get a reason instead of a bare 404 (one digit: clients
/// that do not zero-pad a first byte below 0x10, see `ClientUrlInfo::from_path`).
fn looks_like_mediator_path(path: &str) -> bool {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((prefix, _)) => {
            (1..=2).contains(&prefix.len()) && prefix.bytes().all(is_lower_hex_digit)
        }
        None => false,
    }
}

fn is_lower_hex_digit(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_group_id_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex_digit)
}

fn is_room_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_BENCH_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The Durable Object name of a device group: `hex(DGPK.public)` (DESIGN.md §1).
pub(crate) fn group_object_name(info: &ClientUrlInfo) -> String {
    hex::encode(info.device_group_id.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::crypto::PublicKey;

    fn info(group: &str) -> ClientUrlInfo {
        let mut id = [0u8; 32];
        id[0] = 0xab;
        id[31] = 0x01;
        ClientUrlInfo::new(PublicKey(id), group).unwrap()
    }

    #[test]
    fn mediator_path_routes_to_its_group() {
        let info = info("01");
        let path = format!("/{}", info.path());
        assert_eq!(classify(&path, false), Route::Mediator(info.clone()));
        assert_eq!(
            group_object_name(&info),
            "ab00000000000000000000000000000000000000000000000000000000000001"
        );
    }

    /// Leniency: the group id's first byte without its leading zero still routes to the group.
    #[test]
    fn one_digit_prefix_routes_to_its_group() {
        let mut id = [0u8; 32];
        id[0] = 0x0e;
        let info = ClientUrlInfo::new(PublicKey(id), "1").unwrap();
        let hex_part = info.path().split_once('/').unwrap().1.to_owned();
        for prefix in ["0e", "e"] {
            assert_eq!(
                classify(&format!("/{prefix}/{hex_part}"), false),
                Route::Mediator(info.clone()),
                "{prefix}"
            );
        }
        assert_eq!(
            classify(&format!("/f/{hex_part}"), false),
            Route::BadMediatorPath(UrlError::Prefix)
        );
    }

    #[test]
    fn malformed_mediator_path_is_a_bad_request_with_reason() {
        assert_eq!(
            classify("/ab/zz", false),
            Route::BadMediatorPath(UrlError::Hex)
        );
        assert_eq!(
            classify("/ab/", false),
            Route::BadMediatorPath(UrlError::PathShape)
        );
        // Well-formed ClientUrlInfo under the wrong prefix.
        let path = format!("/cd/{}", info("01").path().split_once('/').unwrap().1);
        assert_eq!(
            classify(&path, false),
            Route::BadMediatorPath(UrlError::Prefix)
        );
    }

    #[test]
    fn push_route_carries_the_token() {
        assert_eq!(classify("/push/abc", false), Route::Push("abc"));
        assert_eq!(classify("/push/", false), Route::Push(""));
        assert_eq!(classify("/pushx", false), Route::NotFound);
    }

    #[test]
    fn directory_prefix_keeps_the_rest_of_the_path() {
        assert_eq!(
            classify("/directory/identity/ABCD1234", false),
            Route::Directory("/identity/ABCD1234")
        );
        assert_eq!(classify("/directory", false), Route::Directory(""));
        assert_eq!(classify("/directoryx", false), Route::NotFound);
    }

    #[test]
    fn dev_routes_exist_only_when_enabled() {
        let group = "ab".repeat(32);
        let stats = format!("/_dev/group/{group}");
        assert_eq!(
            classify("/bench-relay/room-1", true),
            Route::BenchRelay("room-1")
        );
        assert_eq!(classify("/bench-relay/room-1", false), Route::NotFound);
        assert_eq!(classify(&stats, true), Route::DevGroupStats(&group));
        assert_eq!(classify(&stats, false), Route::NotFound);
        let tamper = format!("{stats}/tamper-next");
        assert_eq!(classify(&tamper, true), Route::DevGroupTamper(&group));
        assert_eq!(classify(&tamper, false), Route::NotFound);
        assert_eq!(
            classify("/_dev/store-selftest", true),
            Route::DevStoreSelftest
        );
        assert_eq!(classify("/_dev/store-selftest", false), Route::NotFound);
    }

    #[test]
    fn dev_routes_refuse_odd_names() {
        assert_eq!(classify("/bench-relay/", true), Route::NotFound);
        assert_eq!(classify("/bench-relay/a/b", true), Route::NotFound);
        let long = "a".repeat(MAX_BENCH_NAME_LEN + 1);
        assert_eq!(
            classify(&format!("/bench-relay/{long}"), true),
            Route::NotFound
        );
        assert_eq!(classify("/_dev/group/AB", true), Route::NotFound);
        let upper = "AB".repeat(32);
        assert_eq!(
            classify(&format!("/_dev/group/{upper}"), true),
            Route::NotFound
        );
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in [
            "/",
            "",
            "/index.html",
            "/js/app.js",
            "/AB/cd",
            "/abc/def",
            "/ab",
        ] {
            assert_eq!(classify(path, true), Route::NotFound, "{path}");
        }
    }
}
