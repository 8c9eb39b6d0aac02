//! Who the visitor is: a logged-in user (upstream `x-attune-user`, or the demo cookie) or the
//! random `attune_vid` visitor id; the profile key is the core's keyed hash of that identity.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    User,
    Visitor,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: Kind,
    pub id: String,
}

impl Identity {
    pub fn profile_key(&self, key: &[u8]) -> String {
        attune_core::hash::profile_key(key, &self.id)
    }
}

/// A well-formed visitor id: 32 lowercase hex digits (what [`new_visitor_id`] makes).
pub fn valid_visitor_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A user id named by the upstream or the demo login: non-empty, ≤ 128 bytes, printable.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= attune_core::event::MAX_USER_BYTES
        && id.bytes().all(|b| b.is_ascii_graphic())
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

pub fn new_visitor_id(random: [u8; 16]) -> String {
    hex(&random)
}

/// The identity for this request: a valid user id wins over the visitor id.
pub fn resolve(user: Option<&str>, visitor: &str) -> Identity {
    match user.map(str::trim).filter(|u| valid_user_id(u)) {
        Some(u) => Identity {
            kind: Kind::User,
            id: u.to_owned(),
        },
        None => Identity {
            kind: Kind::Visitor,
            id: visitor.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let v = new_visitor_id([0xab; 16]);
        assert!(valid_visitor_id(&v));
        assert!(!valid_visitor_id("ABAB"));
        assert!(!valid_visitor_id(&"g".repeat(32)));
        assert_eq!(resolve(Some("17850"), &v).kind, Kind::User);
        assert_eq!(resolve(Some(" "), &v).kind, Kind::Visitor);
        assert_eq!(resolve(Some("a b"), &v).id, v);
        let k = resolve(None, &v).profile_key(b"k");
        assert!(k.starts_with("p:") && k.len() == 34);
    }
}
