//! `/push/{token}`: the chat server wakes a device group (docs/worker.md "Waking a group").
//!
//! The token is the group id sealed under `TANDEM_PUSH_KEY` (`tandem_shared::mediator::push`):
//! only this deployment can open it, so the chat server, which stores it per identity, never
//! learns which group an identity belongs to. Every refusal is the same 404, so a prober cannot
//! tell a forged token from an expired one or from a group that is gone.

use tandem_shared::mediator::PushKey;
use worker::{Env, Method, Request, Response};

use crate::config;
use crate::group::PUSH_PATH;
use crate::GROUP_BINDING;

/// The rate limiting binding for pushes (`wrangler.toml`), keyed by device group.
const PUSH_LIMITER: &str = "PUSHES";

/// Opens `token` and forwards the push to its group's object; 204 when delivered, 429 past
/// the group's rate (the chat server backs off and tries again).
pub(crate) async fn forward(req: &Request, env: &Env, token: &str) -> worker::Result<Response> {
    if req.method() != Method::Post {
        return Response::error("method not allowed: POST", 405);
    }
    let key: PushKey = match config::push_key(|name| config::env_text(env, name)) {
        Ok(Some(key)) => key,
        Ok(None) | Err(_) => return Response::error("not found", 404),
    };
    let Ok(group) = key.open(token, crate::group::now_ms()) else {
        return Response::error("not found", 404);
    };
    let name = hex::encode(group.0);
    match env.rate_limiter(PUSH_LIMITER) {
        Ok(limiter) => {
            if !limiter.limit(name.clone()).await?.success {
                return Response::error("too many pushes for this group", 429);
            }
        }
        Err(_) => {
            worker::console_warn!("no {PUSH_LIMITER} rate limiter bound: pushes are not limited")
        }
    }
    let mut init = worker::RequestInit::new();
    init.with_method(Method::Post);
    let to_object = Request::new_with_init(&format!("https://device-group{PUSH_PATH}"), &init)?;
    env.durable_object(GROUP_BINDING)?
        .id_from_name(&name)?
        .get_stub()?
        .fetch_with_request(to_object)
        .await
}
