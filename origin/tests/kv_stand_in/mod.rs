//! What the publish tests' stand-ins of the Cloudflare KV bulk API share.

use axum::response::{IntoResponse, Response};

/// A bulk API success for `n` keys.
pub fn ok(n: usize) -> Response {
    axum::Json(
        serde_json::json!({"success": true, "errors": [], "messages": [],
        "result": {"successful_key_count": n, "unsuccessful_keys": []}}),
    )
    .into_response()
}

/// One schema-v1 event a minute old, as JSON.
pub fn event(id: &str, user: &str, item: &str, kind: &str) -> String {
    format!(
        r#"{{"v":1,"event_id":"{id}","user":"{user}","ts":{},"kind":"{kind}","item":"{item}"}}"#,
        attune_origin::now_ms() - 60_000
    )
}
