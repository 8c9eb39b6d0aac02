//! Admin routes (catalog, users, dead letters, full publish), used by the CLI's `--url` mode
//! while `serve` owns the store.

use attune_core::CatalogItem;
use attune_core::hash::profile_key;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::{authorized, unauthorized};

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

pub(super) async fn put_catalog(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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

pub(super) async fn get_user(
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

pub(super) async fn delete_user(
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
pub(super) struct DlqQuery {
    limit: Option<usize>,
}

pub(super) async fn get_dlq(
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

pub(super) async fn publish_full(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
