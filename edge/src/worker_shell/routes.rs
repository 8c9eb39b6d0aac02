//! The Worker's internal routes (`/__attune/*`): the beacon script and event intake, the
//! debug view, the dev-only bulk KV route and the demo login.

use std::future::Future;
use std::pin::Pin;

use attune_core::session::{self, DEFAULT_GAP_MS};
use futures_util::future::join_all;
use worker::{
    Context, Env, Fetch, Headers, KvStore, Method, Request, Response, Result, console_error,
    wasm_bindgen::JsValue,
};

use super::{json_response, new_request, now_ms, page, random_hex, text_response, wait_until};
use crate::headers::BEACON_JS;
use crate::page::Settings;
use crate::{cookies, devkv, events, identity, policy, urls};

pub(super) async fn internal(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    s: &Settings,
    path: &str,
) -> Result<Response> {
    let method = req.method();
    match (method, path) {
        (Method::Get, "/__attune/beacon.js") => {
            let headers = Headers::new();
            headers.set("content-type", "application/javascript; charset=utf-8")?;
            headers.set("cache-control", "public, max-age=3600")?;
            Ok(Response::ok(BEACON_JS)?.with_headers(headers))
        }
        (Method::Post, "/__attune/events") => beacon(req, env, ctx, s).await,
        (Method::Put, "/__attune/kv/bulk") | (Method::Post, "/__attune/kv/bulk/delete") => {
            dev_kv(req, env, s, path.ends_with("/delete")).await
        }
        (Method::Get, "/__attune/demo/login") if s.demo_login => {
            let url = req.inner().url();
            let user = urls::query_param(urls::split(&url).2, "user").unwrap_or_default();
            if !identity::valid_user_id(&user) || user.contains([';', ',', '"']) {
                return text_response(400, "bad user");
            }
            redirect_with_cookie(&cookies::set(cookies::DEMO_USER, &user, 7 * 24 * 3600))
        }
        (Method::Get, "/__attune/demo/logout") if s.demo_login => {
            redirect_with_cookie(&cookies::clear(cookies::DEMO_USER))
        }
        _ => {
            let _ = req.bytes().await;
            text_response(404, "not found")
        }
    }
}

pub(super) const DEBUG_ROUTE: &str = "/__attune/debug";

/// `{"error": message}`; messages are this file's plain ASCII constants, so nothing needs
/// escaping (and no JSON value type is linked for it).
pub(super) fn error_json(message: &'static str) -> String {
    format!("{{\"error\":\"{message}\"}}")
}

/// `/__attune/debug?path=/…`: the explanation of a page, always as JSON (also for a page
/// Attune leaves alone, and for every refusal).
pub(super) async fn debug_route(
    req: Request,
    env: &Env,
    ctx: &Context,
    s: &Settings,
) -> Result<Response> {
    if req.method() != Method::Get {
        return json_response(405, error_json("method not allowed"));
    }
    if !s.debug_allowed(req.headers().get("x-attune-debug")?.as_deref()) {
        return json_response(401, error_json("unauthorized"));
    }
    let url = req.inner().url();
    let (origin, _, query) = urls::split(&url);
    let target = urls::query_param(query, "path").unwrap_or_else(|| "/".into());
    if !target.starts_with('/') || target.starts_with("//") || target.starts_with("/__attune/") {
        return json_response(400, error_json("path must be a page path"));
    }
    let (p, q) = target.split_once('?').unwrap_or((&target, ""));
    let target_url = urls::join(origin, p, Some(q).filter(|q| !q.is_empty()));
    let inner = new_request(&target_url, Method::Get, req.headers(), None)?;
    page(inner, env, ctx, s, true).await
}

fn redirect_with_cookie(cookie: &str) -> Result<Response> {
    let headers = Headers::new();
    headers.set("location", "/")?;
    headers.append("set-cookie", cookie)?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::empty()?.with_status(302).with_headers(headers))
}

async fn beacon(mut req: Request, env: &Env, ctx: &Context, s: &Settings) -> Result<Response> {
    let h = req.headers();
    let cookie = h.get("cookie")?;
    let gpc = h.get("sec-gpc")?;
    let ua = h.get("user-agent")?;
    let consent = cookies::get(cookie.as_deref(), cookies::CONSENT);
    let too_big = h
        .get("content-length")?
        .and_then(|l| l.trim().parse::<usize>().ok())
        .is_some_and(|l| l > events::MAX_BATCH_BYTES);
    if too_big {
        return json_response(400, events::error_reply("too_large"));
    }
    let body = req.bytes().await?;
    if policy::consent_denied(gpc.as_deref(), consent) || ua.as_deref().is_some_and(policy::is_bot)
    {
        // Never stored, never forwarded.
        return json_response(202, r#"{"accepted":0,"rejected":[]}"#.into());
    }
    let now = now_ms();
    let mut set_cookies = Vec::new();
    let (_, who) = page::identify(cookie.as_deref(), s, &mut set_cookies, random_hex);
    let batch = match events::normalize_batch(&body, &who.id, now, &mut random_hex) {
        Ok(b) => b,
        Err(e) => return json_response(400, events::error_reply(e.code())),
    };
    // A viewed item joins the session at once (covers pages whose meta tag came late).
    if !s.session_key.is_empty() {
        let mut session = session::decode_cookie(
            cookies::get(cookie.as_deref(), cookies::SESSION),
            s.session_key.as_bytes(),
            now,
            DEFAULT_GAP_MS,
        );
        let mut changed = false;
        for e in &batch.events {
            if e.kind == attune_core::EventKind::View
                && let Some(item) = &e.item
                && session.recent.first().is_none_or(|r| &r.item != item)
            {
                session.record_item(item, now);
                changed = true;
            }
        }
        if changed {
            set_cookies.push(cookies::set_session(&session::encode_cookie(
                &session,
                s.session_key.as_bytes(),
            )));
        }
    }
    let reply = events::batch_reply(&batch);
    forward(ctx, env, s, batch.events);
    let mut resp = json_response(202, reply)?;
    for c in set_cookies {
        resp.headers_mut().append("set-cookie", &c)?;
    }
    Ok(resp)
}

/// Sends events to the origin's ingest inside `waitUntil`.
fn forward(ctx: &Context, _env: &Env, s: &Settings, events: Vec<attune_core::Event>) {
    if events.is_empty() || s.ingest_url.is_empty() {
        return;
    }
    let url = s.ingest_url.clone();
    let token = s.ingest_token.clone();
    wait_until(ctx, async move {
        if let Err(e) = post_events(&url, &token, &events).await {
            console_error!("attune: forwarding {} events to {url}: {e}", events.len());
        }
    });
}

pub(super) async fn post_events(
    url: &str,
    token: &str,
    events: &[attune_core::Event],
) -> Result<()> {
    let headers = Headers::new();
    headers.set("content-type", "application/x-ndjson")?;
    if !token.is_empty() {
        headers.set("authorization", &format!("Bearer {token}"))?;
    }
    let body = JsValue::from(events::to_ndjson(events));
    let resp = Fetch::Request(new_request(url, Method::Post, &headers, Some(&body))?)
        .send()
        .await?;
    if resp.status_code() >= 300 {
        console_error!("attune: ingest answered {}", resp.status_code());
    }
    Ok(())
}

async fn dev_kv(mut req: Request, env: &Env, s: &Settings, delete: bool) -> Result<Response> {
    if s.dev_kv_token.is_empty() {
        return text_response(404, "not found");
    }
    let auth = req.headers().get("authorization")?;
    if !devkv::authorized(auth.as_deref(), &s.dev_kv_token) {
        return json_response(401, devkv::reply(0, &[], Some("unauthorized")));
    }
    let body = req.bytes().await?;
    let kv = env.kv("ATTUNE_KV")?;
    let parsed = if delete {
        devkv::parse_delete(&body).map(|keys| (keys, Vec::new()))
    } else {
        devkv::parse_write(&body).map(|pairs| (Vec::new(), pairs))
    };
    let (keys, pairs) = match parsed {
        Ok(p) => p,
        Err(e) => return json_response(400, devkv::reply(0, &[], Some(&e))),
    };
    let n = if delete { keys.len() } else { pairs.len() };
    let mut failed = Vec::new();
    let mut ok = 0;
    // 64 writes or deletes at a time. One future type for both (boxed, answering whether it
    // worked), so the wasm holds one `join_all`, not two.
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        let ops: Vec<Pin<Box<dyn Future<Output = bool> + '_>>> = (start..end)
            .map(|i| -> Pin<Box<dyn Future<Output = bool> + '_>> {
                if delete {
                    let (kv, k) = (&kv, &keys[i]);
                    Box::pin(async move { kv.delete(k).await.is_ok() })
                } else {
                    let (kv, p) = (&kv, &pairs[i]);
                    Box::pin(async move {
                        let r = put(kv, p).await;
                        if let Err(e) = &r {
                            console_error!("attune: dev kv put {}: {e}", p.key);
                        }
                        r.is_ok()
                    })
                }
            })
            .collect();
        for (i, done) in (start..end).zip(join_all(ops).await) {
            if done {
                ok += 1;
            } else {
                failed.push(if delete { &keys[i] } else { &pairs[i].key }.clone());
            }
        }
    }
    json_response(200, devkv::reply(ok, &failed, None))
}

async fn put(kv: &KvStore, p: &devkv::Pair) -> Result<()> {
    let mut b = kv.put_bytes(&p.key, &p.value)?;
    if let Some(m) = &p.metadata {
        b = b.metadata(m)?;
    }
    if let Some(e) = p.expiration {
        b = b.expiration(e);
    }
    if let Some(t) = p.expiration_ttl {
        b = b.expiration_ttl(t);
    }
    b.execute().await?;
    Ok(())
}
