//! HTTP ingest and admin API (axum).
//!
//! - `POST /v1/events` (bearer token, body limit; framing by `Content-Type`: `application/json`
//!   is one JSON value, an array or one event, `application/x-ndjson` one event per line,
//!   anything else by the first non-space byte; a UTF-8 BOM is skipped; gzip is inflated up to
//!   the body limit, other encodings get 415): every event is
//!   appended to the durable log as received and validated by the pipeline, so each one is
//!   counted exactly once (`in = applied + duplicates + DLQ`). `202` only after the append is
//!   on disk; `429` + `Retry-After` when the pipeline is behind or the append queue is full;
//!   `503` + `Retry-After` when the log cannot take it (a full disk) or a part of the service
//!   stopped (`Health`).
//! - `PUT /v1/catalog` (JSON array of `CatalogItem`), `GET|DELETE /v1/users/{id}`,
//!   `GET /v1/dlq`, `POST /v1/publish/full`: authenticated admin routes used by the CLI's
//!   `--url` mode while `serve` owns the store.
//! - `GET /healthz`, `/readyz` (JSON; 503 + the failing parts' reasons when the pipeline or
//!   publisher stopped, readiness also while shutting down), `/metrics`, `/v1/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::lifecycle::Phase;
use crate::node::Node;
use crate::stream::Progress;

mod admin;
mod auth;
mod events;
mod status;

#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Node,
    pub progress: Arc<Progress>,
    pub publish_now: Arc<tokio::sync::Notify>,
    /// Ready (accepting events) while [`Phase::Serving`].
    pub phase: tokio::sync::watch::Receiver<Phase>,
}

pub fn router(state: AppState) -> Router {
    let limit = state.node.cfg.ingest.max_body_bytes;
    Router::new()
        .route("/v1/events", post(events::post_events))
        .route("/v1/catalog", put(admin::put_catalog))
        .route(
            "/v1/users/{id}",
            get(admin::get_user).delete(admin::delete_user),
        )
        .route("/v1/dlq", get(admin::get_dlq))
        .route("/v1/publish/full", post(admin::publish_full))
        .route("/v1/status", get(status::status))
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
