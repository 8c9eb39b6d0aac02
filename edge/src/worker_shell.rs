//! The Worker shell: routing, KV reads within the time budget, the isolate-memory model cache,
//! the upstream fetch (Cache API for a real upstream), the streaming rewrite and `waitUntil`
//! work. It only awaits and forwards: a page's decisions are `page::Page`'s, the cache's are
//! `cache`'s, and the rest belong to the other plain modules.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use attune_core::{Manifest, Profile};
use futures_channel::oneshot;
use futures_util::future::{Either, join, join_all, select};
use worker::{
    Cache, Context, Date, Delay, Env, Error, Fetch, Headers, KvStore, Method, Request, Response,
    ResponseBody, Result, console_error, event, wasm_bindgen::JsValue, web_sys,
};

use crate::cache::{self, CacheRequest, CacheResponse, Store};
use crate::data::{Fallback, Model, ModelCache, decode};
use crate::headers::Outcome;
use crate::identity;
use crate::page::{
    self, Loaded, Page, PageRequest, ProfileRead, STRIP_ON_PASS_THROUGH, STRIP_ON_REWRITE,
    Settings, UpstreamHead,
};
use crate::policy::Bypass;
use crate::rewrite::{PageRewriter, Report};
use crate::{cookies, events, urls};

mod body;
mod routes;

thread_local! {
    static CACHE: RefCell<ModelCache> = RefCell::new(ModelCache::default());
    static MODEL: RefCell<Option<Rc<Model>>> = const { RefCell::new(None) };
    static SETTINGS: RefCell<Option<Rc<Settings>>> = const { RefCell::new(None) };
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A var or secret by name (`None` when unset).
fn lookup(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.to_string())
        .or_else(|_| env.secret(name).map(|v| v.to_string()))
        .ok()
}

/// The settings, read from the environment once per isolate: vars and secrets are fixed for an
/// isolate's life (a deployment, or `wrangler dev` reloading its config, starts new isolates),
/// and reading them is some twenty calls out of the wasm (a var, then a secret, per name).
fn settings(env: &Env) -> Rc<Settings> {
    if let Some(s) = SETTINGS.with(|s| s.try_borrow().ok().and_then(|s| s.clone())) {
        return s;
    }
    let s = Rc::new(Settings::from_lookup(|name| lookup(env, name)));
    SETTINGS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(s.clone());
        }
    });
    s
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

fn random_hex() -> String {
    let mut buf = [0u8; 16];
    if getrandom::fill(&mut buf).is_err() {
        // Never seen in Workers; a time-derived id is still unique enough for an event id.
        buf[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    identity::hex(&buf)
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let settings = settings(&env);
    let path = req.path();
    if path == routes::DEBUG_ROUTE {
        return match routes::debug_route(req, &env, &ctx, &settings).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                console_error!("attune: debug route: {e}");
                json_response(400, routes::error_json("bad request"))
            }
        };
    }
    if path.starts_with("/__attune/") {
        return match routes::internal(req, &env, &ctx, &settings, &path).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                console_error!("attune: internal route {path}: {e}");
                text_response(400, "bad request")
            }
        };
    }
    page(req, &env, &ctx, &settings, false).await
}

/// `ctx.wait_until`, boxed: every background task shares one future type, so the wasm holds
/// one copy of the promise glue instead of one per task.
fn wait_until(ctx: &Context, task: impl Future<Output = ()> + 'static) {
    let task: Pin<Box<dyn Future<Output = ()>>> = Box::pin(task);
    ctx.wait_until(task);
}

/// `Request::new_with_init` without worker's `RequestInit`, whose conversion carries the
/// serializer of every Cloudflare `cf` request property (some 11 KB of wasm) for a `cf` this
/// Worker never sets. Same request otherwise (redirects followed, the fetch default).
fn new_request(
    url: &str,
    method: Method,
    headers: &Headers,
    body: Option<&JsValue>,
) -> Result<Request> {
    let init = web_sys::RequestInit::new();
    init.set_method(method.as_ref());
    init.set_headers(headers.as_ref());
    if let Some(body) = body {
        init.set_body(body);
    }
    web_sys::Request::new_with_str_and_init(url, &init)
        .map(Request::from)
        .map_err(|e| {
            Error::JsError(
                e.as_string()
                    .unwrap_or_else(|| "invalid URL or options for Request".into()),
            )
        })
}

fn text_response(status: u16, body: &str) -> Result<Response> {
    Ok(Response::ok(body)?.with_status(status))
}

fn json_response(status: u16, body: String) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

// ---------------------------------------------------------------------------------------------
// Pages: the I/O of `page::Page`, which makes every decision.
// ---------------------------------------------------------------------------------------------

async fn read_profile(kv: KvStore, key: Option<String>) -> ProfileRead {
    let Some(key) = key else {
        return ProfileRead::Skipped;
    };
    match kv.get(&key).bytes().await {
        Err(_) => ProfileRead::Failed(Fallback::KvError),
        Ok(None) => ProfileRead::Missing,
        Ok(Some(bytes)) => match decode::<Profile>(&bytes) {
            Ok((v, p)) => ProfileRead::Found(Box::new(p), v),
            Err(f) => ProfileRead::Failed(f),
        },
    }
}

/// The shared model as of the current manifest: the isolate copy when the manifest's versions
/// match, otherwise only the changed keys are read.
async fn read_model(kv: KvStore) -> std::result::Result<Rc<Model>, Fallback> {
    let bytes = kv
        .get(attune_core::model::keys::MANIFEST)
        .bytes()
        .await
        .map_err(|_| Fallback::KvError)?
        .ok_or(Fallback::NoData)?;
    let (_, manifest) = decode::<Manifest>(&bytes)?;
    if let Some(model) = MODEL.with(|m| m.borrow().clone())
        && model.manifest == manifest
    {
        return Ok(model);
    }
    let stale = CACHE.with(|c| c.borrow().stale_keys(&manifest));
    let reads = join_all(stale.iter().map(|k| kv.get(k).bytes())).await;
    let model = CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        for (key, read) in stale.iter().zip(reads) {
            let bytes = read.map_err(|_| Fallback::KvError)?;
            cache.store(key, bytes.as_deref())?;
        }
        cache.assemble(&manifest)
    })?;
    let model = Rc::new(model);
    MODEL.with(|m| *m.borrow_mut() = Some(model.clone()));
    Ok(model)
}

/// Races a future against what is left of the budget. `None`: out of time.
async fn within<T>(fut: impl std::future::Future<Output = T>, ms: u64) -> Option<T> {
    let fut = Box::pin(fut);
    let delay = Box::pin(Delay::from(Duration::from_millis(ms)));
    match select(fut, delay).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

fn copy_headers(from: &Headers, skip: &[&str]) -> Result<Headers> {
    let out = Headers::new();
    for (k, v) in from.entries() {
        if !skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
            out.append(&k, &v)?;
        }
    }
    Ok(out)
}

/// Sets the page's headers: `set-cookie` is appended (there may be several), the rest set.
fn apply_headers<'a>(
    headers: &Headers,
    list: impl IntoIterator<Item = (&'a str, String)>,
) -> Result<()> {
    for (name, value) in list {
        if name == "set-cookie" {
            headers.append(name, &value)?;
        } else {
            headers.set(name, &value)?;
        }
    }
    Ok(())
}

/// Passes the upstream response through untouched (body streamed as is), labelled.
fn pass_through(resp: Response, outcome: Outcome, started: u64) -> Result<Response> {
    let headers = copy_headers(resp.headers(), STRIP_ON_PASS_THROUGH)?;
    apply_headers(
        &headers,
        page::pass_through_headers(outcome, started, now_ms()),
    )?;
    Ok(resp.with_headers(headers))
}

/// The upstream could not be reached (or its request not even built): `502`, labelled as the
/// upstream's failure. The debug view says the same as JSON.
fn upstream_failed(e: &Error, started: u64, explain: bool) -> Result<Response> {
    console_error!("attune: upstream: {e}");
    let outcome = Outcome::Bypass(Bypass::Upstream);
    let resp = if explain {
        json_response(502, page::bypass_debug_json(outcome))?
    } else {
        let headers = Headers::new();
        headers.set("content-type", "text/plain; charset=utf-8")?;
        headers.set("cache-control", "no-store")?;
        Response::ok("upstream unreachable")?
            .with_status(502)
            .with_headers(headers)
    };
    apply_headers(
        resp.headers(),
        page::pass_through_headers(outcome, started, now_ms()),
    )?;
    Ok(resp)
}

/// The request that goes upstream: the visitor's method, headers and body, without
/// `cache::UPSTREAM_REQUEST_DROP` and with only the site's own cookies.
fn upstream_request(req: &Request, url: &str) -> Result<Request> {
    let headers = copy_headers(req.headers(), cache::UPSTREAM_REQUEST_DROP)?;
    if let Some(site) = cookies::site_cookies(req.headers().get("cookie")?.as_deref()) {
        headers.set("cookie", &site)?;
    }
    let body = req.inner().body().map(JsValue::from);
    new_request(url, req.method(), &headers, body.as_ref())
}

/// Fetches the page: from the assets binding, or the upstream origin through the Cache API
/// (a page is stored once, unpersonalized, when `cache::store` allows a shared copy).
async fn upstream(
    req: &Request,
    env: &Env,
    ctx: &Context,
    s: &Settings,
    cache_req: &CacheRequest<'_>,
) -> Result<Response> {
    let url = req.inner().url();
    let (origin, path, query) = urls::split(&url);
    if s.upstream.is_empty() {
        let assets = env.assets("ASSETS")?;
        // The shop is served with `html_handling = "none"`: a directory means its index.html.
        let url = if path.ends_with('/') {
            urls::join(origin, &format!("{path}index.html"), query)
        } else {
            url.clone()
        };
        return assets.fetch_request(upstream_request(req, &url)?).await;
    }
    let target = urls::join(&s.upstream, path, query);
    let cache = Cache::default();
    if cache_req.may_read()
        && let Ok(Some(hit)) = cache.get(target.as_str(), false).await
    {
        return Ok(hit);
    }
    let mut resp = Fetch::Request(upstream_request(req, &target)?)
        .send()
        .await?;
    let h = resp.headers();
    let (content_type, cache_control, vary) = (
        h.get("content-type")?,
        h.get("cache-control")?,
        h.get("vary")?,
    );
    let decision = cache::store(
        cache_req,
        &CacheResponse {
            status: resp.status_code(),
            content_type: content_type.as_deref(),
            cache_control: cache_control.as_deref(),
            vary: vary.as_deref(),
            expires: h.has("expires")?,
            set_cookie: h.has("set-cookie")?,
            attune_user: h.has("x-attune-user")?,
        },
        s.html_ttl_s,
    );
    let copy = match decision {
        Store::No(_) => return Ok(resp),
        Store::AsIs => resp.cloned()?,
        Store::WithCacheControl(cc) => {
            let copy = resp.cloned()?;
            let headers = copy_headers(copy.headers(), &[])?;
            headers.set("cache-control", &cc)?;
            copy.with_headers(headers)
        }
    };
    wait_until(ctx, async move {
        if let Err(e) = cache.put(target.as_str(), copy).await {
            console_error!("attune: caching upstream HTML: {e}");
        }
    });
    Ok(resp)
}

async fn page(
    req: Request,
    env: &Env,
    ctx: &Context,
    s: &Settings,
    explain: bool,
) -> Result<Response> {
    let started = now_ms();
    let h = req.headers();
    let (cookie, ua, range, req_cc, gpc, debug_token) = (
        h.get("cookie")?,
        h.get("user-agent")?,
        h.get("range")?,
        h.get("cache-control")?,
        h.get("sec-gpc")?,
        h.get("x-attune-debug")?,
    );
    let method = req.method().to_string();
    let cache_req = CacheRequest {
        method: &method,
        range: range.is_some(),
        authorization: h.has("authorization")?,
        cookie: cookie.as_deref(),
        cache_control: req_cc.as_deref(),
    };
    let facts = PageRequest {
        method: &method,
        range: range.as_deref(),
        cache_control: req_cc.as_deref(),
        user_agent: ua.as_deref(),
        sec_gpc: gpc.as_deref(),
        cookie: cookie.as_deref(),
        debug_token: debug_token.as_deref(),
        country: req.cf().and_then(|cf| cf.country()),
    };
    let mut page = match Page::start(&facts, s, started, random_hex) {
        Ok(page) => page,
        Err(outcome) if explain => return json_response(200, page::bypass_debug_json(outcome)),
        Err(outcome) => {
            return match upstream(&req, env, ctx, s, &cache_req).await {
                Ok(resp) => pass_through(resp, outcome, started),
                Err(e) => upstream_failed(&e, started, false),
            };
        }
    };

    // The KV reads run while the upstream is fetched, on their own (waitUntil), so a read
    // that misses the budget still warms the isolate cache for the next request.
    let kv = env.kv("ATTUNE_KV").ok();
    let (tx, rx) = oneshot::channel::<Loaded>();
    if let Some(kv) = kv.clone() {
        let key = page.profile_key();
        wait_until(ctx, async move {
            let (model, profile) = join(read_model(kv.clone()), read_profile(kv, key)).await;
            let _ = tx.send(Loaded { model, profile });
        });
    }

    let resp = match upstream(&req, env, ctx, s, &cache_req).await {
        Ok(resp) => resp,
        Err(e) => return upstream_failed(&e, started, explain),
    };
    let rh = resp.headers();
    let (content_type, cache_control, content_encoding, user) = (
        rh.get("content-type")?,
        rh.get("cache-control")?,
        rh.get("content-encoding")?,
        rh.get("x-attune-user")?,
    );
    let head = UpstreamHead {
        status: resp.status_code(),
        content_type: content_type.as_deref(),
        cache_control: cache_control.as_deref(),
        content_encoding: content_encoding.as_deref(),
        user: user.as_deref(),
    };
    if let Some(outcome) = page.on_upstream(&head, now_ms()) {
        if explain {
            return json_response(200, page::bypass_debug_json(outcome));
        }
        return pass_through(resp, outcome, started);
    }

    let loaded = match &kv {
        Some(_) => within(rx, page.wait_ms(now_ms()))
            .await
            .and_then(|r| r.ok()),
        None => None,
    };
    if page.on_loaded(loaded, kv.is_some())
        && let Some(kv) = &kv
    {
        let read = within(
            read_profile(kv.clone(), page.profile_key()),
            page.wait_ms(now_ms()),
        )
        .await;
        page.on_profile(read);
    }
    let mut rewriter = PageRewriter::new(page.rewrite(now_ms()));

    // The first chunk goes through before the headers: it names the page's item (meta tag in
    // <head>), which joins the session cookie sent with these headers.
    let headers = copy_headers(resp.headers(), STRIP_ON_REWRITE)?;
    let status = resp.status_code();
    let upstream_body = match resp.body() {
        ResponseBody::Stream(stream) => Some(stream.clone()),
        _ => None,
    };
    let mut first = Vec::new();
    // The body, when there is more of it after the first chunk.
    let mut rest = None;
    if let Some(b) = &upstream_body {
        let reader = body::Reader::new(b)?;
        match reader.next().await {
            Ok(Some(chunk)) => {
                first = rewriter.write(&chunk);
                if explain {
                    while let Ok(Some(chunk)) = reader.next().await {
                        rewriter.write(&chunk);
                    }
                } else {
                    rest = Some(b);
                }
            }
            Ok(None) => {}
            Err(e) => console_error!("attune: upstream body: {e}"),
        }
    }

    if explain {
        let (_, report) = rewriter.end();
        return json_response(200, page.debug_json(&report));
    }

    let report = if page.debug() {
        rewriter.report()
    } else {
        Report::default()
    };
    apply_headers(
        &headers,
        page.response_headers(rewriter.page_item().as_deref(), &report, now_ms()),
    )?;

    // Impressions of what was rendered, once the stream has ended (waitUntil).
    let (report_tx, report_rx) = oneshot::channel::<Report>();
    if page.forwards_impressions() {
        let (url, token) = (s.ingest_url.clone(), s.ingest_token.clone());
        let user = page.identity().id.clone();
        wait_until(ctx, async move {
            if let Ok(report) = report_rx.await {
                let evs = events::impressions(&report, &user, now_ms(), &mut random_hex);
                if !evs.is_empty()
                    && let Err(e) = routes::post_events(&url, &token, &evs).await
                {
                    console_error!("attune: forwarding impressions: {e}");
                }
            }
        });
    }

    let resp = match rest {
        Some(b) => {
            let out = body::Output::new()?;
            let readable = out.readable.clone();
            wait_until(
                ctx,
                body::rewrite(b.clone(), out, first, rewriter, report_tx),
            );
            Response::from_body(ResponseBody::Stream(readable))?
        }
        None => {
            let (tail, report) = rewriter.end();
            let _ = report_tx.send(report);
            first.extend_from_slice(&tail);
            Response::from_bytes(first)?
        }
    };
    Ok(resp.with_status(status).with_headers(headers))
}
