//! The dev bulk KV route (`PUT /__attune/kv/bulk`, `POST /__attune/kv/bulk/delete`): exactly the
//! Cloudflare KV REST bulk bodies, so the origin's publisher targets `wrangler dev` with the
//! same code it uses against the real API.

use attune_core::secret::tokens_match;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Map, Value};

pub const MAX_PAIRS: usize = 10_000;
pub const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;
pub const MAX_KEY_BYTES: usize = 512;

#[derive(Deserialize)]
struct RawPair {
    key: String,
    value: String,
    #[serde(default)]
    base64: bool,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    expiration: Option<u64>,
    #[serde(default)]
    expiration_ttl: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub key: String,
    pub value: Vec<u8>,
    pub metadata: Option<Value>,
    pub expiration: Option<u64>,
    pub expiration_ttl: Option<u64>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key != "." && key != ".."
}

/// A bulk write body: a JSON array of `{"key", "value", "base64"?, "metadata"?, ...}`.
pub fn parse_write(body: &[u8]) -> Result<Vec<Pair>, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err("body over 100 MB".into());
    }
    let raw: Vec<RawPair> =
        serde_json::from_slice(body).map_err(|e| format!("bad bulk write body: {e}"))?;
    if raw.len() > MAX_PAIRS {
        return Err(format!("more than {MAX_PAIRS} pairs"));
    }
    raw.into_iter()
        .map(|p| {
            if !valid_key(&p.key) {
                return Err(format!("invalid key {:?}", p.key));
            }
            let value = if p.base64 {
                B64.decode(p.value.as_bytes())
                    .map_err(|_| format!("value of {:?} is not base64", p.key))?
            } else {
                p.value.into_bytes()
            };
            Ok(Pair {
                key: p.key,
                value,
                metadata: p.metadata,
                expiration: p.expiration,
                expiration_ttl: p.expiration_ttl,
            })
        })
        .collect()
}

/// A bulk delete body: a JSON array of keys.
pub fn parse_delete(body: &[u8]) -> Result<Vec<String>, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err("body over 100 MB".into());
    }
    let keys: Vec<String> =
        serde_json::from_slice(body).map_err(|e| format!("bad bulk delete body: {e}"))?;
    if keys.len() > MAX_PAIRS {
        return Err(format!("more than {MAX_PAIRS} keys"));
    }
    if let Some(k) = keys.iter().find(|k| !valid_key(k)) {
        return Err(format!("invalid key {k:?}"));
    }
    Ok(keys)
}

/// Cloudflare's envelope: `{"success":…,"errors":[…],"messages":[],"result":{…}}`.
pub fn reply(successful: usize, unsuccessful: &[String], error: Option<&str>) -> String {
    let mut result = Map::new();
    result.insert("successful_key_count".into(), Value::from(successful));
    result.insert(
        "unsuccessful_keys".into(),
        Value::Array(
            unsuccessful
                .iter()
                .map(|k| Value::from(k.as_str()))
                .collect(),
        ),
    );
    let errors = match error {
        Some(msg) => {
            let mut e = Map::new();
            e.insert("code".into(), Value::from(10_001));
            e.insert("message".into(), Value::from(msg));
            vec![Value::Object(e)]
        }
        None => Vec::new(),
    };
    let mut m = Map::new();
    m.insert(
        "success".into(),
        Value::Bool(error.is_none() && unsuccessful.is_empty()),
    );
    m.insert("errors".into(), Value::Array(errors));
    m.insert("messages".into(), Value::Array(Vec::new()));
    m.insert(
        "result".into(),
        if error.is_some() {
            Value::Null
        } else {
            Value::Object(result)
        },
    );
    Value::Object(m).to_string()
}

/// Whether `Authorization: Bearer <token>` carries the configured token, compared in constant
/// time ([`tokens_match`]). An empty configured token never matches (the route is off).
pub fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    tokens_match(token.as_bytes(), given.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloudflare_bodies() {
        let body = br#"[{"key":"p:ab","value":"AAEC","base64":true,"metadata":{"v":3}},{"key":"cfg","value":"{}"}]"#;
        let pairs = parse_write(body).unwrap();
        assert_eq!(pairs[0].value, vec![0, 1, 2]);
        assert_eq!(pairs[0].metadata, Some(serde_json::json!({"v":3})));
        assert_eq!(pairs[1].value, b"{}");
        assert!(parse_write(br#"[{"key":"","value":""}]"#).is_err());
        assert!(parse_write(br#"[{"key":"a","value":"!!","base64":true}]"#).is_err());
        assert!(parse_write(b"{}").is_err());
        assert_eq!(parse_delete(br#"["a","b"]"#).unwrap(), vec!["a", "b"]);
        assert!(parse_delete(br#"[1]"#).is_err());
        let r: Value = serde_json::from_str(&reply(2, &[], None)).unwrap();
        assert_eq!(r["success"], true);
        assert_eq!(r["result"]["successful_key_count"], 2);
    }

    #[test]
    fn auth() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cres"), "s3cret"));
        assert!(!authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some("Bearer "), ""));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
    }
}
