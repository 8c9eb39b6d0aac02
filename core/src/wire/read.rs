//! The snapshot decoders: the envelope and every snapshot body, read with [`Reader`] and no
//! serde. A generic serde deserializer instantiated per body type cost the Worker's wasm some
//! 93 KiB (27 KiB gzipped); these readers are small, and each struct's reader is generated from
//! one list of its fields ([`read_struct!`]). They accept what the serde path through a generic
//! tree (`serde_json::Value`) accepts:
//!
//! - maps with string keys, fields in any order, unknown fields skipped (but still checked to
//!   be well formed), the last of duplicate keys wins;
//! - fields with a serde default may be missing (`#[serde(default)]` containers take the
//!   container's `Default`), every other field is required;
//! - integers in any MessagePack width that fits the field; floats from float or integer
//!   values, never NaN or infinite (the tree turns those into `null`);
//! - strings as valid UTF-8 `str` only (no `bin`), no extension types anywhere, nesting at
//!   most [`MAX_DEPTH`] deep; trailing bytes after the envelope are ignored.
//!
//! The envelope's `schema` is checked once the whole envelope has been read, before the body
//! is decoded: another major is [`WireError::UnknownMajor`], anything malformed is
//! [`WireError::Malformed`] with the [`DecodeError`] that says where. Tests pin the readers to
//! `rmp-serde` on the golden fixtures and on generated values.

use alloc::string::String;
use alloc::vec::Vec;
use smol_str::SmolStr;

pub use super::reader::{DecodeError, Expected, Found, MAX_DEPTH, Reader, Step};
use super::{Envelope, SCHEMA_MAJOR, WireError};
use crate::decay::Acc;
use crate::model::{CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard};
use crate::model::{TrendEntry, Trending};
use crate::profile::{
    Affinity, CartEntry, DecayClass, KindWeight, Profile, ProfileConfig, Purchased, Visit,
};
use crate::rank::{RankParams, Strategy};
use crate::rules::{
    Arm, Config, DeviceClass, Experiment, Predicate, Segment, SlotRule, VariantRule,
};

/// A value this layer can read.
pub trait Read: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Decodes a snapshot envelope (see the module documentation for what is accepted).
pub fn decode<T: Read>(bytes: &[u8]) -> Result<Envelope<T>, WireError> {
    decode_envelope(bytes).map_err(|e| match e {
        WireError::Malformed(e) => WireError::Malformed(e.locate(bytes)),
        other => other,
    })
}

fn decode_envelope<T: Read>(bytes: &[u8]) -> Result<Envelope<T>, WireError> {
    let mut r = Reader::new(bytes);
    // Fields are kept raw and read once the schema is known to be this major.
    let (mut schema, mut version, mut updated_at, mut body) = (None, None, None, None);
    // Where `body` starts while it is being skipped.
    let mut body_at = None;
    let read = r.fields(|r, key| {
        let slot = match key {
            "schema" => &mut schema,
            "version" => &mut version,
            "updated_at" => &mut updated_at,
            "body" => &mut body,
            _ => return r.skip(),
        };
        body_at = (key == "body").then_some(r.offset());
        *slot = Some(r.raw()?);
        body_at = None;
        Ok(())
    });
    if let Err(e) = read {
        // A body that is not even well formed (cut short, say) fails while it is skipped,
        // which knows no types. When the schema read so far is this major, reading it as `T`
        // from the same place says what it expected there.
        return Err(match body_at {
            Some(at) if schema.and_then(|mut s| s.u64().ok()).is_some_and(ours) => {
                T::read(&mut Reader::at(bytes, at)).err().unwrap_or(e)
            }
            _ => e,
        }
        .into());
    }
    let schema = raw_field::<u64>(schema, 0, "schema")?;
    if !ours(schema) {
        return Err(WireError::UnknownMajor {
            found: (schema >> 8) as u8,
        });
    }
    Ok(Envelope {
        schema: schema as u16,
        version: raw_field(version, 0, "version")?,
        updated_at: raw_field(updated_at, 0, "updated_at")?,
        body: raw_field(body, 0, "body")?,
    })
}

/// Whether `schema` is a schema of this major.
fn ours(schema: u64) -> bool {
    schema >> 8 == u64::from(SCHEMA_MAJOR) && schema <= u64::from(u16::MAX)
}

/// A required field kept raw, read now; a missing one is reported at `at`, where its map
/// starts.
fn raw_field<T: Read>(
    raw: Option<Reader<'_>>,
    at: usize,
    name: &'static str,
) -> Result<T, DecodeError> {
    T::read(&mut raw.ok_or_else(|| missing(at, name))?)
}

/// A required field `name` absent from the map that starts at `at`.
#[cold]
#[inline(never)]
pub fn missing(at: usize, name: &'static str) -> DecodeError {
    DecodeError::new(at, Expected::Field(name), Found::Missing)
}

/// The wire name of a field: its own name unless renamed.
macro_rules! wire_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $name:literal) => {
        $name
    };
}

/// Implements [`Read`] for a struct written as a map with named fields, from one list of its
/// fields. Each field's type picks its reader; `as "k"` gives a wire name that differs from the
/// field's (`#[serde(rename)]`), `or <expr>` a default for a field that may be missing
/// (`#[serde(default)]`). A `T: Default { … }` struct (`#[serde(default)]` on the container)
/// starts from `T::default()` and every field may be missing. Unknown fields are skipped; the
/// last of duplicate fields wins.
macro_rules! read_struct {
    ($ty:ident: Default { $($field:ident $(as $name:literal)?),* $(,)? }) => {
        impl Read for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let mut value = $ty::default();
                r.fields(|r, key| {
                    $(if key == wire_name!($field $($name)?) {
                        value.$field = Read::read(r)?;
                        return Ok(());
                    })*
                    r.skip()
                })?;
                Ok(value)
            }
        }
    };
    ($ty:ident { $($field:ident $(as $name:literal)? $(or $default:expr)?),* $(,)? }) => {
        impl Read for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let at = r.offset();
                $(let mut $field = None;)*
                r.fields(|r, key| {
                    $(if key == wire_name!($field $($name)?) {
                        $field = Some(Read::read(r)?);
                        return Ok(());
                    })*
                    r.skip()
                })?;
                Ok($ty {
                    $($field: read_struct!(@value $field, wire_name!($field $($name)?), at
                        $(, $default)?),)*
                })
            }
        }
    };
    (@value $field:ident, $name:expr, $at:ident) => {
        $field.ok_or_else(|| missing($at, $name))?
    };
    (@value $field:ident, $name:expr, $at:ident, $default:expr) => {
        $field.unwrap_or_else(|| $default)
    };
}

/// Implements [`Read`] for a unit enum written as its variants' names.
macro_rules! read_names {
    ($ty:ident { $($variant:ident = $name:literal),* $(,)? }) => {
        impl Read for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let at = r.offset();
                match r.str()? {
                    $($name => Ok($ty::$variant),)*
                    other => Err(unknown_variant(at, stringify!($ty), other)),
                }
            }
        }
    };
}

#[cold]
#[inline(never)]
fn unknown_variant(at: usize, ty: &'static str, name: &str) -> DecodeError {
    DecodeError::new(at, Expected::Variant(ty), Found::Name(name.into()))
}

macro_rules! read_with {
    ($($ty:ty => $method:ident),* $(,)?) => {
        $(impl Read for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                r.$method()
            }
        })*
    };
}

read_with! {
    u64 => u64, u32 => u32, usize => usize, i64 => i64, f64 => f64, f32 => f32, bool => bool,
    String => string,
}

impl Read for SmolStr {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.str().map(SmolStr::new)
    }
}

impl<T: Read> Read for Vec<T> {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.list(T::read)
    }
}

/// `nil` is `None`.
impl<T: Read> Read for Option<T> {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.nil() {
            Ok(None)
        } else {
            T::read(r).map(Some)
        }
    }
}

/// A pair is a two-element array.
impl<A: Read, B: Read> Read for (A, B) {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.tuple(2)?;
        Ok((A::read(r)?, B::read(r)?))
    }
}

impl Read for Acc {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.tuple(3)?;
        Ok(Acc(r.i64()?, r.i64()?, r.i64()?))
    }
}

impl Read for Visit {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (start, end) = Read::read(r)?;
        Ok(Visit(start, end))
    }
}

impl Read for Strategy {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        let name = r.str()?;
        Strategy::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| unknown_variant(at, "Strategy", name))
    }
}

read_names!(DecayClass { Short = "short", Long = "long" });
read_names!(DeviceClass { Desktop = "desktop", Mobile = "mobile", Tablet = "tablet" });

read_struct!(Manifest { shards, versions });
read_struct!(CatalogShard { items });
read_struct!(CatalogItem {
    id,
    title,
    url,
    image,
    price,
    category
});
read_struct!(Neighbour { item as "i", sim as "s" });
read_struct!(NeighbourShard { lists });
read_struct!(TrendEntry { item as "i", score as "s" });
read_struct!(Trending { items, by_category });

read_struct!(Affinity {
    key as "k",
    short as "s" or Acc::default(),
    long as "l" or Acc::default(),
});
read_struct!(Purchased { item as "k", last as "t" });
read_struct!(CartEntry { item as "k", added as "a", removed as "r" });
read_struct!(Profile: Default {
    version, first_seen, last_seen, epoch, items, categories, purchased, cart, purchases,
    visits, older_visits,
});

read_struct!(KindWeight { weight, class });
read_struct!(ProfileConfig: Default {
    short_half_life_ms, long_half_life_ms, view, click, add_to_cart, remove_from_cart,
    purchase, search, impression, max_items, max_categories, max_purchased, max_cart,
    max_sessions, session_gap_ms,
});
read_struct!(RankParams: Default {
    session_weight, profile_weight, category_weight, trend_weight, session_half_life_ms,
    session_items, session_position_decay, seed_items, seed_categories, per_category, trending_candidates, diversity_cap,
    max_candidates,
});

/// An internally tagged predicate (`{"if": "purchases_at_least", "n": 1}`): the tag may come
/// after the fields, and fields of other variants are ignored whatever they hold, so fields
/// are kept raw until the tag is known.
impl Read for Predicate {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        let (mut tag, mut n, mut category, mut score, mut any_of) = (None, None, None, None, None);
        r.fields(|r, key| {
            let slot = match key {
                "if" => {
                    tag = Some((r.offset(), r.str()?));
                    return Ok(());
                }
                "n" => &mut n,
                "category" => &mut category,
                "score" => &mut score,
                "any_of" => &mut any_of,
                _ => return r.skip(),
            };
            *slot = Some(r.raw()?);
            Ok(())
        })?;
        let (tag_at, tag) = tag.ok_or_else(|| missing(at, "if"))?;
        Ok(match tag {
            "purchases_at_least" => Predicate::PurchasesAtLeast {
                n: raw_field(n, at, "n")?,
            },
            "category_affinity_at_least" => Predicate::CategoryAffinityAtLeast {
                category: raw_field(category, at, "category")?,
                score: raw_field(score, at, "score")?,
            },
            "visits_at_least" => Predicate::VisitsAtLeast {
                n: raw_field(n, at, "n")?,
            },
            "new_visitor" => Predicate::NewVisitor,
            "returning_visitor" => Predicate::ReturningVisitor,
            "country" => Predicate::Country {
                any_of: raw_field(any_of, at, "any_of")?,
            },
            "device" => Predicate::Device {
                any_of: raw_field(any_of, at, "any_of")?,
            },
            other => return Err(unknown_variant(tag_at, "Predicate", other)),
        })
    }
}

read_struct!(Segment { name, all });
read_struct!(VariantRule { variant, segment });
read_struct!(SlotRule { slot, variants });
read_struct!(Arm {
    name,
    weight,
    variant or None,
    strategy or None,
});
read_struct!(Experiment {
    id,
    slot,
    traffic_bp,
    control,
    arms,
    active or true,
});
read_struct!(Config: Default { segments, slots, experiments, profile, rank });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{SCHEMA, encode};
    use alloc::string::ToString;
    use alloc::vec;

    fn env<T: serde::Serialize>(body: T) -> Vec<u8> {
        encode(&Envelope::new(3, 4, body))
    }

    #[test]
    fn reads_what_serde_wrote() {
        let m = Manifest {
            shards: 2,
            versions: vec![("c:0".into(), 1), ("t".into(), u64::MAX)],
        };
        assert_eq!(decode::<Manifest>(&env(&m)), Ok(Envelope::new(3, 4, m)));
        let cfg = Config::default();
        assert_eq!(decode::<Config>(&env(&cfg)), Ok(Envelope::new(3, 4, cfg)));
    }

    /// Hand-made MessagePack: `{"schema":…,"version":1,"updated_at":2,"body":<body>}`.
    fn raw(schema: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = vec![0x84, 0xa6];
        out.extend_from_slice(b"schema");
        out.extend_from_slice(schema);
        out.extend_from_slice(b"\xa7version\x01\xaaupdated_at\x02\xa4body");
        out.extend_from_slice(body);
        out
    }

    const SCHEMA_BYTES: &[u8] = &[0xcd, (SCHEMA >> 8) as u8, SCHEMA as u8];

    #[test]
    fn accepts_what_the_tree_accepts() {
        // Missing defaults, unknown fields of any shape, other integer widths, last duplicate.
        let body = b"\x83\xa6shards\xd0\x05\xa8versions\x91\x92\xa1t\xcf\0\0\0\0\0\0\0\x07\xa6shards\xcc\x06";
        let m = decode::<Manifest>(&raw(SCHEMA_BYTES, body)).unwrap().body;
        assert_eq!(m.shards, 6);
        assert_eq!(m.versions, vec![("t".into(), 7)]);
        let body = b"\x82\xa5extra\x92\xcb\x7f\xf8\0\0\0\0\0\0\x81\xa1k\xc0\xa7version\x09";
        let p = decode::<Profile>(&raw(SCHEMA_BYTES, body)).unwrap().body;
        assert_eq!(p.version, 9);
        assert_eq!(p.items, Vec::new());
        // A predicate's tag after its fields; fields of other variants are ignored.
        let body = b"\x81\xa8segments\x91\x82\xa4name\xa1s\xa3all\x92\x82\xa1n\x02\xa2if\xafvisits_at_least\x82\xa2if\xabnew_visitor\xa5score\xa1x";
        let c = decode::<Config>(&raw(SCHEMA_BYTES, body)).unwrap().body;
        assert_eq!(
            c.segments,
            vec![Segment {
                name: "s".into(),
                all: vec![Predicate::VisitsAtLeast { n: 2 }, Predicate::NewVisitor],
            }]
        );
        assert_eq!(c.slots, Config::default().slots);
    }

    /// The error of a body that does not decode, as `(offset, path, message)`.
    fn failure<T: Read + core::fmt::Debug>(bytes: &[u8]) -> (usize, String, String) {
        match decode::<T>(bytes) {
            Err(WireError::Malformed(e)) => {
                let path = e
                    .path()
                    .iter()
                    .map(|s| match s {
                        Step::Field(f) => f.clone(),
                        Step::Index(i) => alloc::format!("{i}"),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                (e.offset(), path, e.to_string())
            }
            other => panic!("expected a malformed snapshot, got {other:?}"),
        }
    }

    /// Offset of `body`'s value in [`raw`]'s output.
    const BODY: usize = 1 + 7 + 3 + 8 + 1 + 11 + 1 + 5;

    #[test]
    fn refuses_what_the_tree_refuses_and_says_where() {
        // NaN where a number is read.
        let body = b"\x82\xa5items\x91\x82\xa1i\xa1a\xa1s\xca\x7f\xc0\0\0\xabby_category\x90";
        let (at, path, msg) = failure::<Trending>(&raw(SCHEMA_BYTES, body));
        assert_eq!((at, path.as_str()), (BODY + 15, "body/items/0/s"));
        assert_eq!(
            msg,
            alloc::format!(
                "at byte {at} in body.items[0].s: expected f32, found a non-finite float"
            )
        );
        // `bin` for a string.
        let (at, path, _) = failure::<Manifest>(&raw(
            SCHEMA_BYTES,
            b"\x82\xa6shards\x01\xa8versions\x91\x92\xc4\x01t\x01",
        ));
        assert_eq!((at, path.as_str()), (BODY + 20, "body/versions/0/0"));
        // An integer key.
        let (at, path, _) =
            failure::<Manifest>(&raw(SCHEMA_BYTES, b"\x82\x01\x01\xa8versions\x90"));
        assert_eq!((at, path.as_str()), (BODY + 1, "body"));
        // A negative count.
        let (at, path, msg) =
            failure::<Manifest>(&raw(SCHEMA_BYTES, b"\x82\xa6shards\xff\xa8versions\x90"));
        assert_eq!((at, path.as_str()), (BODY + 8, "body/shards"));
        assert!(msg.ends_with("expected u32, found integer -1"), "{msg}");
        // A missing required field: reported at the start of its map.
        let (at, path, msg) = failure::<Manifest>(&raw(SCHEMA_BYTES, b"\x81\xa6shards\x01"));
        assert_eq!((at, path.as_str()), (BODY, "body"));
        assert!(
            msg.ends_with("expected field `versions`, found nothing"),
            "{msg}"
        );
        // An extension type in an unknown field.
        let (at, path, _) = failure::<Manifest>(&raw(
            SCHEMA_BYTES,
            b"\x83\xa6shards\x01\xa8versions\x90\xa1x\xd4\x01\x00",
        ));
        assert_eq!((at, path.as_str()), (BODY + 21, "body/x"));
        assert!(
            decode::<Manifest>(&raw(SCHEMA_BYTES, b"\x82\xa6shards\x01\xa8versions\x90")).is_ok()
        );
        // An unknown enum variant, by name.
        let body = b"\x81\xa8segments\x91\x82\xa4name\xa1s\xa3all\x91\x81\xa2if\xa4nope";
        let (at, path, msg) = failure::<Config>(&raw(SCHEMA_BYTES, body));
        assert_eq!((at, path.as_str()), (BODY + 28, "body/segments/0/all/0/if"));
        assert!(
            msg.ends_with("expected Predicate variant, found `nope`"),
            "{msg}"
        );
        // Another major wins over a body that does not decode, not over malformed input.
        let other = [0xcd, 2, 0];
        assert_eq!(
            decode::<Manifest>(&raw(&other, b"\x90")),
            Err(WireError::UnknownMajor { found: 2 })
        );
        let (at, path, _) = failure::<Manifest>(&raw(&other, b"\xc1"));
        assert_eq!((at, path.as_str()), (BODY, "body"));
        for junk in crate::wire::tests::JUNK {
            assert!(decode::<Manifest>(junk).is_err());
        }
        // Nesting is bounded.
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(core::iter::repeat_n(0x91, MAX_DEPTH + 1));
        deep.push(0xc0);
        let (at, _, msg) = failure::<Manifest>(&raw(SCHEMA_BYTES, &deep));
        assert_eq!(at, BODY + 3 + MAX_DEPTH);
        assert!(msg.ends_with("nesting deeper than 1024"), "{msg}");
    }

    #[test]
    fn a_truncated_snapshot_says_where_it_stopped() {
        let m = Manifest {
            shards: 2,
            versions: vec![("c:0".into(), 1), ("t".into(), 300)],
        };
        let bytes = env(&m);
        // Cut inside the last version number (`\xcd\x01\x2c`): the body has been read up to
        // `versions[1][1]`, and the input ends where the reader needed more.
        let cut = &bytes[..bytes.len() - 1];
        let (at, path, msg) = failure::<Manifest>(cut);
        assert_eq!((at, path.as_str()), (cut.len(), "body/versions/1/1"));
        assert_eq!(
            msg,
            alloc::format!(
                "at byte {} in body.versions[1][1]: expected u64, found end of input",
                cut.len()
            )
        );
        // Every shorter prefix fails too, never past its own end.
        for n in 0..bytes.len() {
            match decode::<Manifest>(&bytes[..n]) {
                Err(WireError::Malformed(e)) => assert!(e.offset() <= n),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
    }
}
