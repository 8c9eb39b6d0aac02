//! Status, health, readiness and Prometheus metrics (no authentication, no user data).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::lifecycle::Phase;

pub(super) async fn status(State(state): State<AppState>) -> Response {
    let off = state.progress.offset.load(Ordering::Acquire);
    axum::Json(state.node.status_json(off)).into_response()
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if *state.phase.borrow() == Phase::Serving {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
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
