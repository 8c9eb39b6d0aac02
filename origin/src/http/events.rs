//! `POST /v1/events`: the ingest route.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::log::AppendRefused;
use crate::metrics::labels;

use super::AppState;
use super::auth::{authorized, unauthorized};
use crate::lifecycle::Phase;

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
fn split_batch(body: &[u8], max_events: usize) -> Result<Vec<Vec<u8>>, (&'static str, String)> {
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
pub(super) struct EventsQuery {
    source: Option<String>,
}

pub(super) async fn post_events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    if *state.phase.borrow() != Phase::Serving {
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
