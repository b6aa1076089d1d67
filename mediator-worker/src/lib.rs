//! Tandem's mediator as a Cloudflare Worker (DESIGN.md §1, §2.6): routes each device WebSocket to
//! the Durable Object of its device group, forwards the identity directory to the chat server,
//! and (development only) hosts the bench relay.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod bench_relay;
mod config;
#[cfg(feature = "dev")]
mod dev_tamper;
mod directory;
mod group;
mod push;
mod route;
mod runtime;
mod schema;
#[cfg(feature = "dev")]
mod selftest;
mod store;
mod tcp;
mod ws;

pub use bench_relay::BenchRelay;
pub use group::DeviceGroup;

use route::Route;
use worker::{event, Context, Env, Request, Response};

/// Durable Object binding of the device groups (`wrangler.toml`).
const GROUP_BINDING: &str = "DEVICE_GROUP";
/// Durable Object binding of the bench relay (`wrangler.toml`).
#[cfg(feature = "dev")]
const BENCH_RELAY_BINDING: &str = "BENCH_RELAY";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let path = req.path();
    let dev_routes =
        dev_routes_enabled(env.var(config::DEV_ROUTES_VAR).ok().map(|v| v.to_string()));
    match route::classify(&path, dev_routes) {
        Route::Mediator(info) => {
            if !is_websocket_upgrade(&req)? {
                return Response::error("expected a WebSocket upgrade", 426);
            }
            env.durable_object(GROUP_BINDING)?
                .id_from_name(&route::group_object_name(&info))?
                .get_stub()?
                .fetch_with_request(req)
                .await
        }
        Route::BadMediatorPath(err) => Response::error(format!("bad mediator path: {err}"), 400),
        Route::Directory(rest) => directory::forward(req, &env, rest).await,
        Route::Push(token) => push::forward(&req, &env, token).await,
        #[cfg(feature = "dev")]
        Route::BenchRelay(name) => {
            env.durable_object(BENCH_RELAY_BINDING)?
                .id_from_name(name)?
                .get_stub()?
                .fetch_with_request(req)
                .await
        }
        #[cfg(feature = "dev")]
        Route::DevGroupStats(group) => {
            env.durable_object(GROUP_BINDING)?
                .id_from_name(group)?
                .get_stub()?
                .fetch_with_str(&format!("https://device-group{}", group::STATS_PATH))
                .await
        }
        #[cfg(feature = "dev")]
        Route::DevGroupTamper(group) => {
            env.durable_object(GROUP_BINDING)?
                .id_from_name(group)?
                .get_stub()?
                .fetch_with_str(&format!("https://device-group{}", dev_tamper::PATH))
                .await
        }
        #[cfg(feature = "dev")]
        Route::DevStoreSelftest => {
            env.durable_object(GROUP_BINDING)?
                .id_from_name(route::SELFTEST_OBJECT)?
                .get_stub()?
                .fetch_with_str(&format!("https://device-group{}", group::SELFTEST_PATH))
                .await
        }
        #[cfg(not(feature = "dev"))]
        Route::BenchRelay(_)
        | Route::DevGroupStats(_)
        | Route::DevGroupTamper(_)
        | Route::DevStoreSelftest => Response::error("not found", 404),
        Route::NotFound => Response::error("not found", 404),
    }
}

/// Whether the development routes answer: only in a build with the `dev` feature, and there only
/// with `TANDEM_DEV_ROUTES=on` (`var`). A release build never has them, whatever its vars say.
fn dev_routes_enabled(var: Option<String>) -> bool {
    cfg!(feature = "dev") && var.as_deref() == Some("on")
}

/// `Upgrade: websocket`, case-insensitively.
pub(crate) fn is_websocket_upgrade(req: &Request) -> worker::Result<bool> {
    Ok(req
        .headers()
        .get("upgrade")?
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The release build (no `dev` feature) has no development routes, whatever its vars say.
    #[test]
    fn dev_routes_need_the_feature_and_the_var() {
        assert_eq!(
            dev_routes_enabled(Some("on".to_owned())),
            cfg!(feature = "dev")
        );
        assert!(!dev_routes_enabled(Some("off".to_owned())));
        assert!(!dev_routes_enabled(Some("ON".to_owned())));
        assert!(!dev_routes_enabled(None));
    }
}
