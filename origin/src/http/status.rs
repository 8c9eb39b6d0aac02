//! Status, health, readiness and Prometheus metrics (no authentication, no user data).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

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

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if *state.phase.borrow() != Phase::Serving {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else if let Some(reason) = state.publish_health.not_ready_reason() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: publisher: {reason}\n"),
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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
