//! Bearer-token check of the `/v1/*` routes (ingest and admin alike).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Whether the request carries the configured bearer token. Without a token configured, only
/// the development mode `serve` allows on a loopback address lets requests through
/// ([`crate::config::Config::check_serve_auth`]); an empty token never matches.
pub(super) fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let cfg = &state.node.cfg;
    let Some(token) = cfg.ingest_token.as_deref() else {
        return cfg.insecure_dev_no_token;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    attune_core::secret::tokens_match(token.as_bytes(), given.as_bytes())
}

pub(super) fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or bad bearer token\n",
    )
        .into_response()
}
