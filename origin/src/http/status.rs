//! Status, health, readiness and Prometheus metrics (no authentication, no user data).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::lifecycle::Phase;

pub(super) async fn status(State(state): State<AppState>) -> Response {
    let off = state.progress.offset.load(Ordering::Acquire);
    let mut status = state.node.status_json(off);
    if let (Some(s), serde_json::Value::Object(p)) = (
        status.as_object_mut(),
        crate::publish::status_json(&state.node.store),
    ) {
        s.extend(p);
    }
    axum::Json(status).into_response()
}

/// Liveness: 200 while every part works; 503 with the failing parts and their reasons.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let failing = state.node.health.failing();
    if failing.is_empty() {
        axum::Json(json!({ "status": "ok" })).into_response()
    } else {
        unavailable(&state, json!({ "status": "failing", "failing": failing }))
    }
}

/// Readiness: 200 while accepting events; 503 with the reasons when shutting down or a part
/// failed.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let failing = state.node.health.not_ready();
    let phase = *state.phase.borrow();
    if failing.is_empty() && phase == Phase::Serving {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        let mut body = json!({ "status": "not ready", "failing": failing });
        if phase != Phase::Serving {
            body["shutting_down"] = json!(true);
        }
        unavailable(&state, body)
    }
}

/// 503 with `Retry-After` and a JSON body.
pub(super) fn unavailable(state: &AppState, body: serde_json::Value) -> Response {
    let retry = state.node.cfg.ingest.retry_after_s.to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, retry)],
        axum::Json(body),
    )
        .into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.node.metrics;
    m.store_bytes
        .set(crate::store::Store::size_bytes(&state.node.cfg.store_path()) as i64);
    let log = state.node.log.usage();
    m.log_segments.set(log.segments as i64);
    m.log_bytes.set(log.bytes as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}
