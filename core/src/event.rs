//! Behavioural events, schema v1 (DESIGN.md, "Event").
//!
//! [`Event`] is the validated domain type. With the `json` feature, [`parse_event`] and
//! [`parse_batch`] turn untrusted bytes into events or into an [`EventError`] that names the
//! reason; they never panic, whatever the input.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::{MINUTE_MS, Millis};

/// The only event schema version this build understands.
pub const SCHEMA_VERSION: u64 = 1;
/// Largest accepted serialized event.
pub const MAX_EVENT_BYTES: usize = 8 * 1024;
pub const MAX_EVENT_ID_BYTES: usize = 64;
pub const MAX_USER_BYTES: usize = 128;
pub const MAX_ITEM_BYTES: usize = 64;
/// Events stamped further than this in the future are refused (clock skew guard).
pub const MAX_FUTURE_SKEW_MS: Millis = 5 * MINUTE_MS;

/// What the visitor did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    View,
    Click,
    AddToCart,
    RemoveFromCart,
    Purchase,
    Search,
    Impression,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::View,
        EventKind::Click,
        EventKind::AddToCart,
        EventKind::RemoveFromCart,
        EventKind::Purchase,
        EventKind::Search,
        EventKind::Impression,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::AddToCart => "add_to_cart",
            EventKind::RemoveFromCart => "remove_from_cart",
            EventKind::Purchase => "purchase",
            EventKind::Search => "search",
            EventKind::Impression => "impression",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Every kind but `search` is about one item and must name it.
    pub fn needs_item(self) -> bool {
        !matches!(self, EventKind::Search)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flat property value. Nested objects and arrays are refused at validation: props are
/// labels (`query`, `qty`, `derived`), not a second payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

pub type Props = BTreeMap<String, PropValue>;

/// A validated schema-v1 event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always [`SCHEMA_VERSION`] for a validated event; kept so the event re-serializes as it
    /// arrived.
    pub v: u64,
    pub event_id: SmolStr,
    pub user: SmolStr,
    pub ts: Millis,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<SmolStr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: Props,
}

impl Event {
    /// A prop as a string, if present and a string.
    pub fn prop_str(&self, key: &str) -> Option<&str> {
        match self.props.get(key) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A prop as an integer, if present and integral.
    pub fn prop_int(&self, key: &str) -> Option<i64> {
        match self.props.get(key) {
            Some(PropValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// Checks the invariants [`parse_event`] enforces, for events built in code.
    pub fn validate(&self, now: Millis) -> Result<(), EventError> {
        if self.v != SCHEMA_VERSION {
            return Err(EventError::UnknownVersion(self.v));
        }
        check_text("event_id", &self.event_id, MAX_EVENT_ID_BYTES)?;
        check_text("user", &self.user, MAX_USER_BYTES)?;
        match &self.item {
            Some(item) => check_text("item", item, MAX_ITEM_BYTES)?,
            None if self.kind.needs_item() => return Err(EventError::MissingField("item")),
            None => {}
        }
        if self.ts > now.saturating_add(MAX_FUTURE_SKEW_MS) {
            return Err(EventError::FutureTimestamp { ts: self.ts, now });
        }
        Ok(())
    }
}

fn check_text(field: &'static str, value: &str, limit: usize) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::EmptyField(field));
    }
    if value.len() > limit {
        return Err(EventError::FieldTooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

/// Why an event was refused. Every variant has a stable [`code`](EventError::code) used as the
/// dead-letter reason and metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("bad JSON: {0}")]
    BadJson(String),
    #[error("unknown schema version {0}")]
    UnknownVersion(u64),
    #[error("unknown event kind {0:?}")]
    UnknownKind(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{0}` is empty")]
    EmptyField(&'static str),
    #[error("field `{field}` is {len} bytes, over the limit of {limit}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("event is {0} bytes, over the limit of 8192")]
    TooLarge(usize),
    #[error("timestamp {ts} is more than 5 minutes ahead of {now}")]
    FutureTimestamp { ts: Millis, now: Millis },
    #[error("props must be an object of strings, numbers and booleans")]
    BadProps,
}

impl EventError {
    /// Short, stable reason code for dead-letter records and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::BadJson(_) => "bad_json",
            EventError::UnknownVersion(_) => "unknown_version",
            EventError::UnknownKind(_) => "unknown_kind",
            EventError::MissingField(_) => "missing_field",
            EventError::EmptyField(_) => "empty_field",
            EventError::FieldTooLong { .. } => "field_too_long",
            EventError::TooLarge(_) => "too_large",
            EventError::FutureTimestamp { .. } => "future_timestamp",
            EventError::BadProps => "bad_props",
        }
    }
}

#[cfg(feature = "json")]
pub use json::{BatchError, BatchLimits, parse_batch, parse_event};

#[cfg(feature = "json")]
mod json {
    use alloc::borrow::Cow;
    use alloc::boxed::Box;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::*;

    /// The shape on the wire, every field optional so a missing field is reported by name
    /// rather than as a generic serde error.
    #[derive(Deserialize)]
    struct RawEvent<'a> {
        v: Option<u64>,
        #[serde(borrow)]
        event_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        user: Option<Cow<'a, str>>,
        ts: Option<u64>,
        #[serde(borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        item: Option<Cow<'a, str>>,
        #[serde(borrow)]
        props: Option<&'a RawValue>,
    }

    /// Parses and validates one event. `now` bounds how far in the future `ts` may be.
    pub fn parse_event(bytes: &[u8], now: Millis) -> Result<Event, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(bytes.len()));
        }
        let raw: RawEvent<'_> =
            serde_json::from_slice(bytes).map_err(|e| EventError::BadJson(e.to_string()))?;
        let v = raw.v.ok_or(EventError::MissingField("v"))?;
        if v != SCHEMA_VERSION {
            return Err(EventError::UnknownVersion(v));
        }
        let kind_text = raw.kind.ok_or(EventError::MissingField("kind"))?;
        let kind = EventKind::parse(&kind_text)
            .ok_or_else(|| EventError::UnknownKind(kind_text.into()))?;
        let props = match raw.props {
            None => Props::new(),
            Some(raw) if raw.get() == "null" => Props::new(),
            Some(raw) => {
                serde_json::from_str::<Props>(raw.get()).map_err(|_| EventError::BadProps)?
            }
        };
        let event = Event {
            v,
            event_id: raw
                .event_id
                .as_deref()
                .map(SmolStr::new)
                .ok_or(EventError::MissingField("event_id"))?,
            user: raw
                .user
                .as_deref()
                .map(SmolStr::new)
                .ok_or(EventError::MissingField("user"))?,
            ts: raw.ts.ok_or(EventError::MissingField("ts"))?,
            kind,
            item: raw.item.as_deref().map(SmolStr::new),
            props,
        };
        event.validate(now)?;
        Ok(event)
    }

    /// Limits on one batch (an HTTP body of events).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BatchLimits {
        pub max_bytes: usize,
        pub max_events: usize,
    }

    impl Default for BatchLimits {
        fn default() -> Self {
            BatchLimits {
                max_bytes: 1024 * 1024,
                max_events: 10_000,
            }
        }
    }

    /// Why a whole batch was refused (as opposed to one event in it).
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum BatchError {
        #[error("batch is {len} bytes, over the limit of {limit}")]
        TooLarge { len: usize, limit: usize },
        #[error("batch has more than {limit} events")]
        TooManyEvents { limit: usize },
        #[error("batch is not a JSON array or NDJSON: {0}")]
        BadJson(String),
        #[error("batch is empty")]
        Empty,
    }

    /// Parses a JSON array of events or NDJSON (one event per line). The batch as a whole is
    /// refused only when it cannot be split into events; each event is then validated on its
    /// own, so one bad event never costs its neighbours.
    pub fn parse_batch(
        body: &[u8],
        now: Millis,
        limits: BatchLimits,
    ) -> Result<Vec<Result<Event, EventError>>, BatchError> {
        if body.len() > limits.max_bytes {
            return Err(BatchError::TooLarge {
                len: body.len(),
                limit: limits.max_bytes,
            });
        }
        let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
        let mut out = Vec::new();
        match first {
            None => return Err(BatchError::Empty),
            Some(b'[') => {
                let items: Vec<Box<RawValue>> =
                    serde_json::from_slice(body).map_err(|e| BatchError::BadJson(e.to_string()))?;
                if items.len() > limits.max_events {
                    return Err(BatchError::TooManyEvents {
                        limit: limits.max_events,
                    });
                }
                for item in items {
                    out.push(parse_event(item.get().as_bytes(), now));
                }
            }
            Some(_) => {
                for line in body.split(|b| *b == b'\n') {
                    let line = trim_ascii(line);
                    if line.is_empty() {
                        continue;
                    }
                    if out.len() == limits.max_events {
                        return Err(BatchError::TooManyEvents {
                            limit: limits.max_events,
                        });
                    }
                    out.push(parse_event(line, now));
                }
            }
        }
        if out.is_empty() {
            return Err(BatchError::Empty);
        }
        Ok(out)
    }

    fn trim_ascii(mut s: &[u8]) -> &[u8] {
        while let [first, rest @ ..] = s {
            if first.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        while let [rest @ .., last] = s {
            if last.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        s
    }

    impl Event {
        /// The event as one line of schema-v1 JSON.
        pub fn to_json(&self) -> String {
            // Serializing plain strings, integers and a flat map cannot fail.
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;
    use alloc::vec;

    const NOW: Millis = 1_733_040_000_000;

    fn ok(json: &str) -> Event {
        parse_event(json.as_bytes(), NOW).expect("valid event")
    }

    fn err(json: &str) -> EventError {
        parse_event(json.as_bytes(), NOW).expect_err("invalid event")
    }

    #[test]
    fn parses_the_design_example() {
        let e = ok(
            r#"{"v":1,"event_id":"e1","user":"u1","ts":1733040000000,"kind":"view","item":"85123A","props":{"derived":true,"qty":2}}"#,
        );
        assert_eq!(e.kind, EventKind::View);
        assert_eq!(e.item.as_deref(), Some("85123A"));
        assert_eq!(e.props.get("derived"), Some(&PropValue::Bool(true)));
        assert_eq!(e.prop_int("qty"), Some(2));
        let again = ok(&e.to_json());
        assert_eq!(again, e);
    }

    #[test]
    fn names_every_reason() {
        assert_eq!(err("{").code(), "bad_json");
        assert_eq!(err("[1]").code(), "bad_json");
        assert_eq!(
            err(r#"{"v":2,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#),
            EventError::UnknownVersion(2)
        );
        assert_eq!(
            err(r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"hover","item":"i"}"#),
            EventError::UnknownKind("hover".into())
        );
        assert_eq!(
            err(r#"{"v":1,"user":"u","ts":1,"kind":"view","item":"i"}"#),
            EventError::MissingField("event_id")
        );
        assert_eq!(
            err(r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view"}"#),
            EventError::MissingField("item")
        );
        assert_eq!(
            err(r#"{"v":1,"event_id":"e","user":"","ts":1,"kind":"view","item":"i"}"#),
            EventError::EmptyField("user")
        );
        let long_id = "x".repeat(65);
        assert_eq!(
            err(&alloc::format!(
                r#"{{"v":1,"event_id":"{long_id}","user":"u","ts":1,"kind":"view","item":"i"}}"#
            ))
            .code(),
            "field_too_long"
        );
        let future = NOW + MAX_FUTURE_SKEW_MS + 1;
        assert_eq!(
            err(&alloc::format!(
                r#"{{"v":1,"event_id":"e","user":"u","ts":{future},"kind":"view","item":"i"}}"#
            ))
            .code(),
            "future_timestamp"
        );
        assert_eq!(
            err(
                r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":{"a":{"b":1}}}"#
            ),
            EventError::BadProps
        );
        let big = alloc::format!(
            r#"{{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":{{"q":"{}"}}}}"#,
            "y".repeat(9000)
        );
        assert_eq!(err(&big).code(), "too_large");
    }

    #[test]
    fn search_needs_no_item() {
        let e = ok(
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"search","props":{"query":"heart"}}"#,
        );
        assert_eq!(e.prop_str("query"), Some("heart"));
    }

    #[test]
    fn batches_split_into_events_and_keep_bad_ones_apart() {
        let good = r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#;
        let array = alloc::format!("[{good},{{\"v\":7}},{good}]");
        let parsed = parse_batch(array.as_bytes(), NOW, BatchLimits::default()).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].is_ok() && parsed[1].is_err() && parsed[2].is_ok());

        let ndjson = alloc::format!("{good}\n\n  not json\n{good}\n");
        let parsed = parse_batch(ndjson.as_bytes(), NOW, BatchLimits::default()).unwrap();
        assert_eq!(
            parsed.iter().map(Result::is_ok).collect::<vec::Vec<_>>(),
            vec![true, false, true]
        );

        let limits = BatchLimits {
            max_bytes: 10,
            max_events: 1,
        };
        assert!(matches!(
            parse_batch(array.as_bytes(), NOW, limits),
            Err(BatchError::TooLarge { .. })
        ));
        let limits = BatchLimits {
            max_bytes: 1 << 20,
            max_events: 1,
        };
        assert_eq!(
            parse_batch(array.as_bytes(), NOW, limits),
            Err(BatchError::TooManyEvents { limit: 1 })
        );
        assert_eq!(parse_batch(b"  \n", NOW, limits), Err(BatchError::Empty));
        assert!(matches!(
            parse_batch(b"[1,", NOW, limits),
            Err(BatchError::BadJson(_))
        ));
    }
}
