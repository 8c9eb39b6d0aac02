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
use super::status::unavailable;
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

/// How a body frames its events, from `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `application/json`: one JSON value, an array of events or a single event.
    Json,
    /// `application/x-ndjson` (or `application/ndjson`): one event per line.
    Ndjson,
    /// Anything else: by the first non-space byte. `[` is an array; a body that is one whole
    /// JSON value (a pretty-printed event) is one event; otherwise one event per line.
    Sniff,
}

fn framing(headers: &HeaderMap) -> Framing {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Framing::Json,
        Some("application/x-ndjson" | "application/ndjson") => Framing::Ndjson,
        _ => Framing::Sniff,
    }
}

/// A request body refused as a whole: status, stable reason (metric label), message.
type Refusal = (StatusCode, &'static str, String);

/// The body as sent, with its `Content-Encoding` undone: identity or gzip, inflated to at most
/// `limit` bytes (the body limit, so a small bomb cannot grow past what a plain body may be).
fn decoded<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, Refusal> {
    use std::io::Read;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(body.into()),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| (StatusCode::BAD_REQUEST, "bad_gzip", e.to_string()))?;
            if out.len() > limit {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body inflates to more than {limit} bytes"),
                ));
            }
            Ok(out.into())
        }
        Some(other) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_encoding",
            format!("Content-Encoding {other:?} is not supported (gzip or none)"),
        )),
    }
}

/// Splits a body into raw events (see [`Framing`]); a UTF-8 BOM in front is skipped.
fn split_batch(body: &[u8], framing: Framing, max_events: usize) -> Result<Vec<Vec<u8>>, Refusal> {
    let bad = |code, msg: String| (StatusCode::BAD_REQUEST, code, msg);
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let one_value = || serde_json::from_slice::<&RawValue>(body);
    let lines = || {
        body.split(|b| *b == b'\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let items: Vec<Vec<u8>> = match (first, framing) {
        (None, _) => return Err(bad("empty", "batch is empty".into())),
        (Some(b'['), Framing::Json | Framing::Sniff) => {
            let raw: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| bad("bad_json", e.to_string()))?;
            raw.into_iter()
                .map(|r| r.get().as_bytes().to_vec())
                .collect()
        }
        (Some(_), Framing::Json) => {
            let raw = one_value().map_err(|e| bad("bad_json", e.to_string()))?;
            vec![raw.get().as_bytes().to_vec()]
        }
        (Some(_), Framing::Sniff) => match one_value() {
            Ok(raw) => vec![raw.get().as_bytes().to_vec()],
            Err(_) => lines(),
        },
        (Some(_), Framing::Ndjson) => lines(),
    };
    if items.is_empty() {
        return Err(bad("empty", "batch is empty".into()));
    }
    if items.len() > max_events {
        return Err(bad(
            "too_many_events",
            format!("more than {max_events} events"),
        ));
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
    // Events acknowledged now would not be applied until a restart: refuse them.
    let failing = state.node.health.failing();
    if !failing.is_empty() {
        return unavailable(
            &state,
            json!({ "error": "the service cannot apply events", "failing": failing }),
        );
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
    let events = match decoded(&headers, &body, cfg.max_body_bytes)
        .and_then(|body| split_batch(&body, framing(&headers), cfg.max_batch_events))
    {
        Ok(e) => e,
        Err((status, code, msg)) => {
            state
                .node
                .metrics
                .batches_rejected
                .get_or_create(&labels(&[("reason", code)]))
                .inc();
            return (status, axum::Json(json!({"error": msg}))).into_response();
        }
    };
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &state.node.kafka {
        return produce(&state, kafka, &source, events).await;
    }
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
            return unavailable(&state, json!({ "error": "log closed" }));
        }
    }
    match rx.await {
        Ok(Ok(end)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "accepted": n, "end": end })),
        )
            .into_response(),
        Ok(Err(e)) => unavailable(&state, json!({ "error": e.to_string() })),
        Err(_) => unavailable(&state, json!({ "error": "log closed" })),
    }
}

/// Kafka mode: the events go to the topic; `202` once the broker acknowledged every one
/// (`acks=all`), `429` when the producer's queue is full, `503` when the broker did not answer.
#[cfg(feature = "kafka")]
async fn produce(
    state: &AppState,
    kafka: &crate::stream::source::EventProducer,
    source: &str,
    events: Vec<Vec<u8>>,
) -> Response {
    use crate::stream::source::kafka::ProduceRefused;
    let n = events.len();
    match kafka.send_events(source, crate::now_ms(), &events).await {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": n }))).into_response(),
        Err(ProduceRefused::QueueFull) => too_busy(state, "the Kafka producer's queue is full"),
        Err(e) => unavailable(state, json!({ "error": e.to_string() })),
    }
}
