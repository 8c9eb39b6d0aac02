//! HTTP ingest and admin API (axum).
//!
//! - `POST /v1/events` (JSON array or NDJSON, bearer token, body limit): every event is
//!   appended to the durable log as received and validated by the pipeline, so each one is
//!   counted exactly once (`in = applied + duplicates + DLQ`). `202` only after the append is
//!   on disk; `429` + `Retry-After` when the pipeline is behind or the append queue is full.
//! - `PUT /v1/catalog` (JSON array of `CatalogItem`), `GET|DELETE /v1/users/{id}`,
//!   `GET /v1/dlq`, `POST /v1/publish/full`: authenticated admin routes used by the CLI's
//!   `--url` mode while `serve` owns the store.
//! - `GET /healthz`, `/readyz`, `/metrics`, `/v1/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use attune_core::CatalogItem;
use attune_core::hash::profile_key;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::log::AppendRefused;
use crate::metrics::labels;
use crate::node::Node;
use crate::stream::Progress;

#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Node,
    pub progress: Arc<Progress>,
    pub publish_now: Arc<tokio::sync::Notify>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    let limit = state.node.cfg.ingest.max_body_bytes;
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/catalog", put(put_catalog))
        .route("/v1/users/{id}", get(get_user).delete(delete_user))
        .route("/v1/dlq", get(get_dlq))
        .route("/v1/publish/full", post(publish_full))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = state
        .node
        .cfg
        .ingest_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return true;
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison.
    let (a, b) = (got.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or bad bearer token\n",
    )
        .into_response()
}

fn too_busy(state: &AppState, why: &str) -> Response {
    state.node.metrics.ingest_throttled.inc();
    let retry = state.node.cfg.ingest.retry_after_s.to_string();
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry)],
        axum::Json(json!({ "error": why })),
    )
        .into_response()
}

/// Splits a body into raw events: a JSON array or NDJSON.
pub fn split_batch(body: &[u8], max_events: usize) -> Result<Vec<Vec<u8>>, (&'static str, String)> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let items: Vec<Vec<u8>> = match first {
        None => return Err(("empty", "batch is empty".into())),
        Some(b'[') => {
            let raw: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| ("bad_json", e.to_string()))?;
            raw.into_iter()
                .map(|r| r.get().as_bytes().to_vec())
                .collect()
        }
        Some(_) => body
            .split(|b| *b == b'\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    };
    if items.is_empty() {
        return Err(("empty", "batch is empty".into()));
    }
    if items.len() > max_events {
        return Err(("too_many_events", format!("more than {max_events} events")));
    }
    Ok(items)
}

#[derive(Deserialize)]
struct EventsQuery {
    source: Option<String>,
}

async fn post_events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    if !state.ready.load(Ordering::Acquire) {
        return too_busy(&state, "shutting down");
    }
    let cfg = &state.node.cfg.ingest;
    let source = q.source.unwrap_or_else(|| "http".into());
    if source.is_empty()
        || source.len() > 32
        || !source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return (StatusCode::BAD_REQUEST, "bad source name\n").into_response();
    }
    let events = match split_batch(&body, cfg.max_batch_events) {
        Ok(e) => e,
        Err((code, msg)) => {
            state
                .node
                .metrics
                .batches_rejected
                .get_or_create(&labels(&[("reason", code)]))
                .inc();
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response();
        }
    };
    let lag = state
        .node
        .log
        .end()
        .saturating_sub(state.progress.offset.load(Ordering::Acquire));
    if lag > cfg.max_lag_bytes {
        return too_busy(&state, "pipeline is behind");
    }
    let n = events.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    match state
        .node
        .log
        .try_append(crate::now_ms(), &source, events, move |r| {
            let _ = tx.send(r);
        }) {
        Ok(()) => {}
        Err(AppendRefused::QueueFull) => return too_busy(&state, "append queue is full"),
        Err(AppendRefused::Closed) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "log closed\n").into_response();
        }
    }
    match rx.await {
        Ok(Ok(end)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "accepted": n, "end": end })),
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "log closed\n").into_response(),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn put_catalog(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let items: Vec<CatalogItem> = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    let node = state.node.clone();
    match tokio::task::spawn_blocking(move || node.put_catalog(items)).await {
        Ok(Ok(n)) => {
            state.publish_now.notify_one();
            axum::Json(json!({ "items": n })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match state.node.inspect_user_json(&id) {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such user"})),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let node = state.node.clone();
    let key = profile_key(node.cfg.profile_key.as_bytes(), &id);
    match tokio::task::spawn_blocking(move || node.forget(&id)).await {
        Ok(Ok(existed)) => {
            state.publish_now.notify_one();
            axum::Json(json!({ "forgotten": existed, "key": key })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct DlqQuery {
    limit: Option<usize>,
}

async fn get_dlq(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DlqQuery>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match (
        state.node.store.dlq(q.limit.unwrap_or(100)),
        state.node.store.dlq_len(),
    ) {
        (Ok(records), Ok(total)) => {
            axum::Json(json!({ "total": total, "records": records })).into_response()
        }
        (Err(e), _) | (_, Err(e)) => internal(e),
    }
}

async fn publish_full(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let node = state.node.clone();
    match tokio::task::spawn_blocking(move || node.enqueue_full()).await {
        Ok(Ok(n)) => {
            state.publish_now.notify_one();
            axum::Json(json!({ "queued": n })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let off = state.progress.offset.load(Ordering::Acquire);
    axum::Json(state.node.status_json(off)).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.node.metrics;
    m.store_bytes
        .set(crate::store::Store::size_bytes(&state.node.cfg.store_path()) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}
