//! What the publish tests' stand-ins of the Cloudflare KV bulk API share.

use attune_origin::config::{Config, TargetKind};
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

/// An origin publishing to a bulk API stand-in at `api` (its Cloudflare target, test tokens and
/// keys, short backoffs); each test sets its own flush, cadence and budget.
pub fn cloudflare_config(data_dir: &std::path::Path, api: std::net::SocketAddr) -> Config {
    let mut cfg = Config {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ingest_token: Some("itok".into()),
        profile_key: "pk".into(),
        ..Config::default()
    };
    cfg.publish.target = TargetKind::Cloudflare;
    cfg.publish.cloudflare_api = format!("http://{api}/client/v4");
    cfg.publish.cloudflare_account_id = Some("acc".into());
    cfg.publish.cloudflare_namespace_id = Some("ns".into());
    cfg.publish.token = Some("cf-token".into());
    cfg.publish.backoff_base_ms = 50;
    cfg.publish.backoff_max_ms = 400;
    cfg
}
