//! Beacon batches (normalized and validated with the core) and the impression events the edge
//! records for what it rendered. Contracts: /tmp/contracts.md "Events edge -> origin".

use attune_core::Millis;
use attune_core::event::{
    Event, EventError, EventKind, MAX_EVENT_BYTES, PropValue, Props, SCHEMA_VERSION,
};
use serde_json::{Map, Value};

use crate::rewrite::{Report, SlotKind};

pub const MAX_BATCH_BYTES: usize = 64 * 1024;
pub const MAX_BATCH_EVENTS: usize = 100;

/// Why a whole batch got `400`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRejection {
    TooLarge,
    TooManyEvents,
    BadJson,
    Empty,
    /// Every event in the batch was invalid; carries the first reason.
    NoValidEvents(&'static str),
}

impl BatchRejection {
    pub fn code(self) -> &'static str {
        match self {
            BatchRejection::TooLarge => "too_large",
            BatchRejection::TooManyEvents => "too_many_events",
            BatchRejection::BadJson => "bad_json",
            BatchRejection::Empty => "empty",
            BatchRejection::NoValidEvents(code) => code,
        }
    }
}

#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    /// `(index in the batch, reason code)` of each refused event.
    pub rejected: Vec<(usize, &'static str)>,
}

/// Parses a JSON array or NDJSON of event objects; sets `user` (always), and `v`, `ts`,
/// `event_id` when absent; validates each with the core. `new_id` draws a random event id.
pub fn normalize_batch(
    body: &[u8],
    user: &str,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Batch, BatchRejection> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(BatchRejection::TooLarge);
    }
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let values: Vec<Result<Value, ()>> = match first {
        None => return Err(BatchRejection::Empty),
        Some(b'[') => serde_json::from_slice::<Vec<Value>>(body)
            .map_err(|_| BatchRejection::BadJson)?
            .into_iter()
            .map(Ok)
            .collect(),
        Some(_) => body
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .map(|l| serde_json::from_slice::<Value>(l).map_err(|_| ()))
            .collect(),
    };
    if values.is_empty() {
        return Err(BatchRejection::Empty);
    }
    if values.len() > MAX_BATCH_EVENTS {
        return Err(BatchRejection::TooManyEvents);
    }
    if first != Some(b'[') && values.iter().all(Result::is_err) {
        return Err(BatchRejection::BadJson);
    }
    let mut batch = Batch::default();
    for (i, value) in values.into_iter().enumerate() {
        let Ok(Value::Object(mut obj)) = value else {
            batch.rejected.push((i, "bad_json"));
            continue;
        };
        obj.insert("user".into(), Value::String(user.into()));
        obj.entry("v").or_insert(Value::from(SCHEMA_VERSION));
        obj.entry("ts").or_insert(Value::from(now));
        if !obj.contains_key("event_id") {
            obj.insert("event_id".into(), Value::String(new_id()));
        }
        match event_from(&obj, now) {
            Ok(e) => batch.events.push(e),
            Err(e) => batch.rejected.push((i, e.code())),
        }
    }
    if batch.events.is_empty() {
        let code = batch.rejected.first().map_or("empty", |r| r.1);
        return Err(BatchRejection::NoValidEvents(code));
    }
    Ok(batch)
}

/// What `attune_core::event::parse_event` makes of `obj` serialized, read from the tree
/// instead of serializing and parsing it again: the Worker then links neither the core's event
/// parser nor its derives (some 15 KB of wasm). Same checks in the same order (every field of
/// the wrong JSON type first, as the parser fails on those before validating anything), the
/// size limit on the serialized object; tests pin it to `parse_event`.
fn event_from(obj: &Map<String, Value>, now: Millis) -> Result<Event, EventError> {
    let len = serde_json::to_vec(obj).map_or(0, |b| b.len());
    if len > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(len));
    }
    let bad = || EventError::BadJson("invalid type".into());
    let uint = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    };
    let text = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(bad()),
    };
    let (v, event_id, user, ts) = (uint("v")?, text("event_id")?, text("user")?, uint("ts")?);
    let (kind, item) = (text("kind")?, text("item")?);
    let v = v.ok_or(EventError::MissingField("v"))?;
    if v != SCHEMA_VERSION {
        return Err(EventError::UnknownVersion(v));
    }
    let kind_text = kind.ok_or(EventError::MissingField("kind"))?;
    let kind =
        EventKind::parse(kind_text).ok_or_else(|| EventError::UnknownKind(kind_text.into()))?;
    let props = match obj.get("props") {
        None | Some(Value::Null) => Props::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Bool(b) => PropValue::Bool(*b),
                    Value::String(s) => PropValue::Str(s.clone()),
                    Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) => PropValue::Int(i),
                        (None, Some(f)) => PropValue::Float(f),
                        (None, None) => return Err(EventError::BadProps),
                    },
                    _ => return Err(EventError::BadProps),
                };
                Ok((k.clone(), v))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(EventError::BadProps),
    };
    let event = Event {
        v,
        event_id: event_id.ok_or(EventError::MissingField("event_id"))?.into(),
        user: user.ok_or(EventError::MissingField("user"))?.into(),
        ts: ts.ok_or(EventError::MissingField("ts"))?,
        kind,
        item: item.map(Into::into),
        props,
    };
    event.validate(now)?;
    Ok(event)
}

/// Impressions of what the edge rendered, and experiment exposures.
pub fn impressions(
    report: &Report,
    user: &str,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut push = |item: String, props: Props| {
        out.push(Event {
            v: SCHEMA_VERSION,
            event_id: new_id().into(),
            user: user.into(),
            ts: now,
            kind: EventKind::Impression,
            item: Some(item.into()),
            props,
        })
    };
    let s = |v: &str| PropValue::Str(v.into());
    for slot in &report.slots {
        if let Some(x) = &slot.exposure {
            let mut props = Props::new();
            props.insert("slot".into(), s(&slot.name));
            props.insert("experiment".into(), s(&x.experiment));
            props.insert("arm".into(), s(&x.arm));
            push(format!("slot:{}", slot.name), props);
        }
        if let SlotKind::Recs {
            strategy, rendered, ..
        } = &slot.kind
        {
            for item in rendered {
                let mut props = Props::new();
                props.insert("slot".into(), s(&slot.name));
                props.insert("strategy".into(), s(strategy));
                push(item.clone(), props);
            }
        }
    }
    out
}

/// Events as NDJSON, the origin ingest's body.
pub fn to_ndjson(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&e.to_json());
        out.push('\n');
    }
    out
}

/// The answer to a beacon: `{"accepted":n,"rejected":[{"index":i,"reason":"…"}]}`.
pub fn batch_reply(batch: &Batch) -> String {
    let rejected: Vec<Value> = batch
        .rejected
        .iter()
        .map(|(i, r)| {
            let mut m = Map::new();
            m.insert("index".into(), Value::from(*i));
            m.insert("reason".into(), Value::from(*r));
            Value::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("accepted".into(), Value::from(batch.events.len()));
    m.insert("rejected".into(), Value::Array(rejected));
    Value::Object(m).to_string()
}

pub fn error_reply(reason: &str) -> String {
    let mut m = Map::new();
    m.insert("error".into(), Value::from(reason));
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_733_040_000_000;

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id{n}")
        }
    }

    #[test]
    fn fills_defaults_and_overrides_user() {
        let body = br#"[{"kind":"view","item":"85123A","user":"someone-else"},{"kind":"hover","item":"x"},{"v":1,"event_id":"e9","ts":5,"kind":"click","item":"22"}]"#;
        let b = normalize_batch(body, "vid1", NOW, &mut ids()).unwrap();
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[0].user, "vid1");
        assert_eq!(b.events[0].ts, NOW);
        assert_eq!(b.events[0].event_id, "id1");
        assert_eq!(b.events[1].event_id, "e9");
        assert_eq!(b.rejected, vec![(1, "unknown_kind")]);
        assert!(batch_reply(&b).contains(r#""accepted":2"#));
    }

    /// `event_from` decides like the core's parser on the object serialized.
    #[test]
    fn event_from_matches_parse_event() {
        let big = format!(r#"{{"q":"{}"}}"#, "y".repeat(9000));
        let cases = [
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"search"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":{"a":true,"b":-3,"c":1.5,"d":"x","e":18446744073709551615,"f":2.0,"g":-0.0}}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":null}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":{"a":{"b":1}}}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":{"a":null}}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":[1]}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":"x"}"#,
            r#"{"v":2,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":1.0,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":-1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":"1","event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":null,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"hover","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":7,"item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"item":"i","props":{"a":[]}}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"hover","props":{"a":[]}}"#,
            r#"{"v":1,"user":"u","ts":1,"kind":"view","item":"i","props":{"a":[]}}"#,
            r#"{"v":1,"user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view"}"#,
            r#"{"v":1,"event_id":"","user":"u","ts":1,"kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":["i"]}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":99999999999999,"kind":"view","item":"i"}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","extra":{"x":[1,2]}}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"i","props":BIG}"#,
            r#"{"v":1,"event_id":"e","user":"u","ts":1,"kind":"view","item":"iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii"}"#,
        ];
        for case in cases {
            let case = case.replace("BIG", &big);
            let Value::Object(obj) = serde_json::from_str::<Value>(&case).unwrap() else {
                panic!("{case}")
            };
            let bytes = serde_json::to_vec(&obj).unwrap();
            let want = attune_core::event::parse_event(&bytes, NOW);
            let got = event_from(&obj, NOW);
            match (&want, &got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{case}"),
                (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{case}"),
                _ => panic!("{case}: {want:?} vs {got:?}"),
            }
        }
    }

    #[test]
    fn ndjson_and_rejections() {
        let nd =
            b"{\"kind\":\"view\",\"item\":\"a\"}\n\n{\"kind\":\"add_to_cart\",\"item\":\"b\"}\n";
        assert_eq!(
            normalize_batch(nd, "u", NOW, &mut ids())
                .unwrap()
                .events
                .len(),
            2
        );
        let r = |b: &[u8]| normalize_batch(b, "u", NOW, &mut ids()).unwrap_err();
        assert_eq!(r(b"   "), BatchRejection::Empty);
        assert_eq!(r(b"[]"), BatchRejection::Empty);
        assert_eq!(r(b"[{"), BatchRejection::BadJson);
        assert_eq!(r(b"not json"), BatchRejection::BadJson);
        assert_eq!(
            r(br#"[{"kind":"view"}]"#),
            BatchRejection::NoValidEvents("missing_field")
        );
        assert_eq!(
            r(&vec![b' '; MAX_BATCH_BYTES + 1]),
            BatchRejection::TooLarge
        );
        let many = format!("[{}]", vec![r#"{"kind":"view","item":"a"}"#; 101].join(","));
        assert_eq!(r(many.as_bytes()), BatchRejection::TooManyEvents);
        let future = format!(r#"[{{"kind":"view","item":"a","ts":{}}}]"#, NOW + 3_600_000);
        assert_eq!(
            r(future.as_bytes()),
            BatchRejection::NoValidEvents("future_timestamp")
        );
    }
}
