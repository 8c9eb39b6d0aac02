//! A hand-written reader for the snapshot envelope and every snapshot body, for the Worker.
//!
//! [`super::decode`] goes through `rmp-serde` and the serde derives, which is fine natively but
//! cost the Worker's wasm some 93 KiB (27 KiB gzipped): a generic deserializer instantiated per
//! body type.
//! [`decode`] here reads the same bytes with small per-type readers and no serde at all. It
//! accepts what the serde path through a generic tree (`serde_json::Value`) accepts:
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
//! [`WireError::Malformed`]. Tests pin it to the serde decoder on the golden fixtures and on
//! generated values.

use alloc::string::String;
use alloc::vec::Vec;
use smol_str::SmolStr;

use super::{Envelope, SCHEMA_MAJOR, WireError};
use crate::decay::Acc;
use crate::model::Trending;
use crate::model::{CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry};
use crate::profile::{
    Affinity, CartEntry, DecayClass, KindWeight, Profile, ProfileConfig, Purchased, Visit,
};
use crate::rank::{RankParams, Strategy};
use crate::rules::{
    Arm, Config, DeviceClass, Experiment, Predicate, Segment, SlotRule, VariantRule,
};

/// Deepest nesting of arrays and maps accepted (`rmp-serde`'s default limit).
pub const MAX_DEPTH: usize = 1024;

/// MessagePack input being read. Every method returns `None` on anything unexpected and then
/// the reader is not to be used further.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

/// An integer as read: non-negative, or negative.
#[derive(Clone, Copy)]
enum Int {
    Pos(u64),
    Neg(i64),
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// A big-endian unsigned integer of `n` bytes (at most 8).
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |v, &b| v << 8 | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Option<usize> {
        usize::try_from(self.be(n)?).ok()
    }

    /// An integer value in any width, or `None` (the marker byte is consumed either way).
    fn int_marker(&mut self, m: u8) -> Option<Int> {
        Some(match m {
            0x00..=0x7f => Int::Pos(u64::from(m)),
            0xe0..=0xff => Int::Neg(i64::from(m as i8)),
            0xcc..=0xcf => Int::Pos(self.be(1 << (m - 0xcc))?),
            0xd0..=0xd3 => {
                let n = 1usize << (m - 0xd0);
                let shift = 64 - 8 * n as u32;
                let v = ((self.be(n)? << shift) as i64) >> shift;
                if v < 0 {
                    Int::Neg(v)
                } else {
                    Int::Pos(v as u64)
                }
            }
            _ => return None,
        })
    }

    fn int(&mut self) -> Option<Int> {
        let m = self.byte()?;
        self.int_marker(m)
    }

    pub fn u64(&mut self) -> Option<u64> {
        match self.int()? {
            Int::Pos(v) => Some(v),
            Int::Neg(_) => None,
        }
    }

    pub fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    pub fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    pub fn i64(&mut self) -> Option<i64> {
        match self.int()? {
            Int::Pos(v) => i64::try_from(v).ok(),
            Int::Neg(v) => Some(v),
        }
    }

    /// A float as `f64` (`f32` values widen exactly); integers convert with `as`.
    fn float(&mut self, narrow: bool) -> Option<f64> {
        let m = self.byte()?;
        let v = match m {
            0xca => f64::from(f32::from_bits(self.be(4)? as u32)),
            0xcb => f64::from_bits(self.be(8)?),
            // serde converts integers straight to the field's type.
            _ => match self.int_marker(m)? {
                Int::Pos(v) if narrow => f64::from(v as f32),
                Int::Neg(v) if narrow => f64::from(v as f32),
                Int::Pos(v) => v as f64,
                Int::Neg(v) => v as f64,
            },
        };
        v.is_finite().then_some(v)
    }

    pub fn f64(&mut self) -> Option<f64> {
        self.float(false)
    }

    pub fn f32(&mut self) -> Option<f32> {
        self.float(true).map(|v| v as f32)
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    /// `nil`, consumed, or nothing consumed.
    pub fn nil(&mut self) -> bool {
        let nil = self.peek() == Some(0xc0);
        if nil {
            self.rest = &self.rest[1..];
        }
        nil
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        core::str::from_utf8(self.take(len)?).ok()
    }

    pub fn string(&mut self) -> Option<String> {
        self.str().map(String::from)
    }

    pub fn array(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x90..=0x9f => Some(usize::from(m & 0x0f)),
            0xdc => self.len(2),
            0xdd => self.len(4),
            _ => None,
        }
    }

    /// An array of exactly `n` elements (a tuple).
    fn tuple(&mut self, n: usize) -> Option<()> {
        (self.array()? == n).then_some(())
    }

    fn map(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x80..=0x8f => Some(usize::from(m & 0x0f)),
            0xde => self.len(2),
            0xdf => self.len(4),
            _ => None,
        }
    }

    /// Reads a map with string keys, calling `field` with each key positioned at its value;
    /// `field` must consume the value (skip what it does not know).
    pub fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        for _ in 0..self.map()? {
            let key = self.str()?;
            field(self, key)?;
        }
        Some(())
    }

    /// An array of values read by `item`.
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.array()?;
        // Every element takes at least one byte: a bogus length cannot reserve much.
        let mut out = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Some(out)
    }

    /// Skips one well-formed value.
    pub fn skip(&mut self) -> Option<()> {
        self.skip_at(0)
    }

    /// Skips one well-formed value and returns a reader over it, to read it later.
    pub fn raw(&mut self) -> Option<Self> {
        let at = self.rest;
        self.skip()?;
        Some(Reader::new(at.get(..at.len() - self.rest.len())?))
    }

    fn skip_at(&mut self, depth: usize) -> Option<()> {
        let m = self.peek()?;
        let (n, per) = match m {
            0xc0 | 0xc2 | 0xc3 => {
                self.byte()?;
                return Some(());
            }
            0xa0..=0xbf | 0xd9..=0xdb => return self.str().map(drop),
            // Any float, even NaN (the tree holds it as `null`).
            0xca => return self.take(5).map(drop),
            0xcb => return self.take(9).map(drop),
            0x80..=0x8f | 0xde | 0xdf => (self.map()?, 2),
            0x90..=0x9f | 0xdc | 0xdd => (self.array()?, 1),
            _ => return self.int().map(drop),
        };
        if depth >= MAX_DEPTH {
            return None;
        }
        for i in 0..n * per {
            if per == 2 && i % 2 == 0 {
                self.str()?;
            } else {
                self.skip_at(depth + 1)?;
            }
        }
        Some(())
    }
}

/// A snapshot body this reader can decode.
pub trait Read: Sized {
    fn read(r: &mut Reader<'_>) -> Option<Self>;
}

/// Decodes a snapshot envelope (see the module documentation for what is accepted).
pub fn decode<T: Read>(bytes: &[u8]) -> Result<Envelope<T>, WireError> {
    let malformed = || WireError::Malformed(String::from("bad snapshot"));
    let mut r = Reader::new(bytes);
    // Fields are kept raw and read once the schema is known to be this major.
    let (mut schema, mut version, mut updated_at, mut body) = (None, None, None, None);
    r.fields(|r, key| {
        let slot = match key {
            "schema" => &mut schema,
            "version" => &mut version,
            "updated_at" => &mut updated_at,
            "body" => &mut body,
            _ => return r.skip(),
        };
        *slot = Some(r.raw()?);
        Some(())
    })
    .ok_or_else(malformed)?;
    let schema = schema.and_then(|mut s| s.u64()).ok_or_else(malformed)?;
    if schema >> 8 != u64::from(SCHEMA_MAJOR) || schema > u64::from(u16::MAX) {
        return Err(WireError::UnknownMajor {
            found: (schema >> 8) as u8,
        });
    }
    let read = move || {
        Some(Envelope {
            schema: schema as u16,
            version: version?.u64()?,
            updated_at: updated_at?.u64()?,
            body: T::read(&mut body?)?,
        })
    };
    read().ok_or_else(malformed)
}

fn string(r: &mut Reader<'_>) -> Option<String> {
    r.string()
}

/// `(String, T)` pairs (a two-element array each).
fn keyed<T>(
    r: &mut Reader<'_>,
    mut value: impl FnMut(&mut Reader<'_>) -> Option<T>,
) -> Option<Vec<(String, T)>> {
    r.list(|r| {
        r.tuple(2)?;
        Some((r.string()?, value(r)?))
    })
}

/// A unit enum variant by name.
fn variant<T: Copy>(r: &mut Reader<'_>, all: &[(&str, T)]) -> Option<T> {
    let name = r.str()?;
    all.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn strategy(r: &mut Reader<'_>) -> Option<Strategy> {
    let name = r.str()?;
    Strategy::ALL.into_iter().find(|s| s.as_str() == name)
}

impl Read for Manifest {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let (mut shards, mut versions) = (None, None);
        r.fields(|r, key| {
            match key {
                "shards" => shards = Some(r.u32()?),
                "versions" => versions = Some(keyed(r, |r| r.u64())?),
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(Manifest {
            shards: shards?,
            versions: versions?,
        })
    }
}

impl Read for CatalogShard {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let mut items = None;
        r.fields(|r, key| {
            match key {
                "items" => items = Some(r.list(CatalogItem::read)?),
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(CatalogShard { items: items? })
    }
}

impl Read for CatalogItem {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let mut f: [Option<String>; 6] = Default::default();
        r.fields(|r, key| {
            let i = match key {
                "id" => 0,
                "title" => 1,
                "url" => 2,
                "image" => 3,
                "price" => 4,
                "category" => 5,
                _ => return r.skip(),
            };
            f[i] = Some(r.string()?);
            Some(())
        })?;
        let [id, title, url, image, price, category] = f;
        Some(CatalogItem {
            id: id?,
            title: title?,
            url: url?,
            image: image?,
            price: price?,
            category: category?,
        })
    }
}

/// `{"i": item, "s": score}`, the shape of [`Neighbour`] and [`TrendEntry`].
fn item_score(r: &mut Reader<'_>) -> Option<(String, f32)> {
    let (mut item, mut score) = (None, None);
    r.fields(|r, key| {
        match key {
            "i" => item = Some(r.string()?),
            "s" => score = Some(r.f32()?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some((item?, score?))
}

impl Read for NeighbourShard {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let mut lists = None;
        r.fields(|r, key| {
            match key {
                "lists" => {
                    lists = Some(keyed(r, |r| {
                        r.list(|r| item_score(r).map(|(item, sim)| Neighbour { item, sim }))
                    })?)
                }
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(NeighbourShard { lists: lists? })
    }
}

impl Read for Trending {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let (mut items, mut by_category) = (None, None);
        r.fields(|r, key| {
            match key {
                "items" => {
                    items =
                        Some(r.list(|r| {
                            item_score(r).map(|(item, score)| TrendEntry { item, score })
                        })?)
                }
                "by_category" => by_category = Some(keyed(r, |r| r.list(string))?),
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(Trending {
            items: items?,
            by_category: by_category?,
        })
    }
}

fn acc(r: &mut Reader<'_>) -> Option<Acc> {
    r.tuple(3)?;
    Some(Acc(r.i64()?, r.i64()?, r.i64()?))
}

fn affinity(r: &mut Reader<'_>) -> Option<Affinity> {
    let (mut key, mut short, mut long) = (None, Acc::default(), Acc::default());
    r.fields(|r, k| {
        match k {
            "k" => key = Some(SmolStr::new(r.str()?)),
            "s" => short = acc(r)?,
            "l" => long = acc(r)?,
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Affinity {
        key: key?,
        short,
        long,
    })
}

fn purchased(r: &mut Reader<'_>) -> Option<Purchased> {
    let (mut item, mut last) = (None, None);
    r.fields(|r, k| {
        match k {
            "k" => item = Some(SmolStr::new(r.str()?)),
            "t" => last = Some(r.u64()?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Purchased {
        item: item?,
        last: last?,
    })
}

fn cart_entry(r: &mut Reader<'_>) -> Option<CartEntry> {
    let (mut item, mut added, mut removed) = (None, None, None);
    r.fields(|r, k| {
        match k {
            "k" => item = Some(SmolStr::new(r.str()?)),
            "a" => added = Some(r.u64()?),
            "r" => removed = Some(r.u64()?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(CartEntry {
        item: item?,
        added: added?,
        removed: removed?,
    })
}

impl Read for Profile {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let mut p = Profile::default();
        r.fields(|r, k| {
            match k {
                "version" => p.version = r.u64()?,
                "first_seen" => p.first_seen = r.u64()?,
                "last_seen" => p.last_seen = r.u64()?,
                "epoch" => p.epoch = r.u32()?,
                "items" => p.items = r.list(affinity)?,
                "categories" => p.categories = r.list(affinity)?,
                "purchased" => p.purchased = r.list(purchased)?,
                "cart" => p.cart = r.list(cart_entry)?,
                "purchases" => p.purchases = r.u32()?,
                "visits" => {
                    p.visits = r.list(|r| {
                        r.tuple(2)?;
                        Some(Visit(r.u64()?, r.u64()?))
                    })?
                }
                "older_visits" => p.older_visits = r.u32()?,
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(p)
    }
}

fn kind_weight(r: &mut Reader<'_>) -> Option<KindWeight> {
    let (mut weight, mut class) = (None, None);
    r.fields(|r, k| {
        match k {
            "weight" => weight = Some(r.f32()?),
            "class" => {
                class = Some(variant(
                    r,
                    &[("short", DecayClass::Short), ("long", DecayClass::Long)],
                )?)
            }
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(KindWeight {
        weight: weight?,
        class: class?,
    })
}

fn profile_config(r: &mut Reader<'_>) -> Option<ProfileConfig> {
    let mut c = ProfileConfig::default();
    r.fields(|r, k| {
        match k {
            "short_half_life_ms" => c.short_half_life_ms = r.u64()?,
            "long_half_life_ms" => c.long_half_life_ms = r.u64()?,
            "view" => c.view = kind_weight(r)?,
            "click" => c.click = kind_weight(r)?,
            "add_to_cart" => c.add_to_cart = kind_weight(r)?,
            "remove_from_cart" => c.remove_from_cart = kind_weight(r)?,
            "purchase" => c.purchase = kind_weight(r)?,
            "search" => c.search = kind_weight(r)?,
            "impression" => c.impression = kind_weight(r)?,
            "max_items" => c.max_items = r.usize()?,
            "max_categories" => c.max_categories = r.usize()?,
            "max_purchased" => c.max_purchased = r.usize()?,
            "max_cart" => c.max_cart = r.usize()?,
            "max_sessions" => c.max_sessions = r.usize()?,
            "session_gap_ms" => c.session_gap_ms = r.u64()?,
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(c)
}

fn rank_params(r: &mut Reader<'_>) -> Option<RankParams> {
    let mut p = RankParams::default();
    r.fields(|r, k| {
        match k {
            "session_weight" => p.session_weight = r.f64()?,
            "profile_weight" => p.profile_weight = r.f64()?,
            "category_weight" => p.category_weight = r.f64()?,
            "trend_weight" => p.trend_weight = r.f64()?,
            "session_half_life_ms" => p.session_half_life_ms = r.u64()?,
            "session_items" => p.session_items = r.usize()?,
            "session_position_decay" => p.session_position_decay = r.f64()?,
            "seed_items" => p.seed_items = r.usize()?,
            "seed_categories" => p.seed_categories = r.usize()?,
            "per_category" => p.per_category = r.usize()?,
            "trending_candidates" => p.trending_candidates = r.usize()?,
            "diversity_cap" => p.diversity_cap = r.usize()?,
            "max_candidates" => p.max_candidates = r.usize()?,
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(p)
}

/// An internally tagged predicate (`{"if": "purchases_at_least", "n": 1}`): the tag may come
/// after the fields, and fields of other variants are ignored whatever they hold, so fields
/// are kept raw until the tag is known.
fn predicate(r: &mut Reader<'_>) -> Option<Predicate> {
    let (mut tag, mut n, mut category, mut score, mut any_of) = (None, None, None, None, None);
    r.fields(|r, k| {
        let slot = match k {
            "if" => {
                tag = Some(r.str()?);
                return Some(());
            }
            "n" => &mut n,
            "category" => &mut category,
            "score" => &mut score,
            "any_of" => &mut any_of,
            _ => return r.skip(),
        };
        *slot = Some(r.raw()?);
        Some(())
    })?;
    Some(match tag? {
        "purchases_at_least" => Predicate::PurchasesAtLeast { n: n?.u32()? },
        "category_affinity_at_least" => Predicate::CategoryAffinityAtLeast {
            category: category?.string()?,
            score: score?.f64()?,
        },
        "visits_at_least" => Predicate::VisitsAtLeast { n: n?.u32()? },
        "new_visitor" => Predicate::NewVisitor,
        "returning_visitor" => Predicate::ReturningVisitor,
        "country" => Predicate::Country {
            any_of: any_of?.list(string)?,
        },
        "device" => Predicate::Device {
            any_of: any_of?.list(|r| {
                variant(
                    r,
                    &[
                        ("desktop", DeviceClass::Desktop),
                        ("mobile", DeviceClass::Mobile),
                        ("tablet", DeviceClass::Tablet),
                    ],
                )
            })?,
        },
        _ => return None,
    })
}

fn segment(r: &mut Reader<'_>) -> Option<Segment> {
    let (mut name, mut all) = (None, None);
    r.fields(|r, k| {
        match k {
            "name" => name = Some(r.string()?),
            "all" => all = Some(r.list(predicate)?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Segment {
        name: name?,
        all: all?,
    })
}

fn variant_rule(r: &mut Reader<'_>) -> Option<VariantRule> {
    let (mut variant, mut segment) = (None, None);
    r.fields(|r, k| {
        match k {
            "variant" => variant = Some(r.string()?),
            "segment" => segment = Some(r.string()?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(VariantRule {
        variant: variant?,
        segment: segment?,
    })
}

fn slot_rule(r: &mut Reader<'_>) -> Option<SlotRule> {
    let (mut slot, mut variants) = (None, None);
    r.fields(|r, k| {
        match k {
            "slot" => slot = Some(r.string()?),
            "variants" => variants = Some(r.list(variant_rule)?),
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(SlotRule {
        slot: slot?,
        variants: variants?,
    })
}

fn arm(r: &mut Reader<'_>) -> Option<Arm> {
    let (mut name, mut weight, mut variant, mut strat) = (None, None, None, None);
    r.fields(|r, k| {
        match k {
            "name" => name = Some(r.string()?),
            "weight" => weight = Some(r.u32()?),
            "variant" => variant = if r.nil() { None } else { Some(r.string()?) },
            "strategy" => strat = if r.nil() { None } else { Some(strategy(r)?) },
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Arm {
        name: name?,
        weight: weight?,
        variant,
        strategy: strat,
    })
}

fn experiment(r: &mut Reader<'_>) -> Option<Experiment> {
    let (mut id, mut slot, mut traffic_bp, mut control, mut arms, mut active) =
        (None, None, None, None, None, true);
    r.fields(|r, k| {
        match k {
            "id" => id = Some(r.string()?),
            "slot" => slot = Some(r.string()?),
            "traffic_bp" => traffic_bp = Some(r.u32()?),
            "control" => control = Some(r.string()?),
            "arms" => arms = Some(r.list(arm)?),
            "active" => active = r.bool()?,
            _ => r.skip()?,
        }
        Some(())
    })?;
    Some(Experiment {
        id: id?,
        slot: slot?,
        traffic_bp: traffic_bp?,
        control: control?,
        arms: arms?,
        active,
    })
}

impl Read for Config {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let mut c = Config::default();
        r.fields(|r, k| {
            match k {
                "segments" => c.segments = r.list(segment)?,
                "slots" => c.slots = r.list(slot_rule)?,
                "experiments" => c.experiments = r.list(experiment)?,
                "profile" => c.profile = profile_config(r)?,
                "rank" => c.rank = rank_params(r)?,
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{SCHEMA, encode};
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

    #[test]
    fn refuses_what_the_tree_refuses() {
        let bad = |body: &[u8]| decode::<Manifest>(&raw(SCHEMA_BYTES, body));
        fn malformed<T>() -> Result<Envelope<T>, WireError> {
            Err(WireError::Malformed("bad snapshot".into()))
        }
        // NaN where a number is read; `bin` for a string; an integer key; a negative count;
        // a missing required field; an extension type in an unknown field.
        assert_eq!(
            decode::<Trending>(&raw(
                SCHEMA_BYTES,
                b"\x82\xa5items\x91\x82\xa1i\xa1a\xa1s\xca\x7f\xc0\0\0\xabby_category\x90"
            )),
            malformed()
        );
        assert_eq!(
            bad(b"\x82\xa6shards\x01\xa8versions\x91\x92\xc4\x01t\x01"),
            malformed()
        );
        assert_eq!(bad(b"\x82\x01\x01\xa8versions\x90"), malformed());
        assert_eq!(bad(b"\x82\xa6shards\xff\xa8versions\x90"), malformed());
        assert_eq!(bad(b"\x81\xa6shards\x01"), malformed());
        assert_eq!(
            bad(b"\x83\xa6shards\x01\xa8versions\x90\xa1x\xd4\x01\x00"),
            malformed()
        );
        assert!(bad(b"\x82\xa6shards\x01\xa8versions\x90").is_ok());
        // Another major wins over a body that does not decode, not over malformed() input.
        let other = [0xcd, 2, 0];
        assert_eq!(
            decode::<Manifest>(&raw(&other, b"\x90")),
            Err(WireError::UnknownMajor { found: 2 })
        );
        assert_eq!(decode::<Manifest>(&raw(&other, b"\xc1")), malformed());
        for junk in crate::wire::tests::JUNK {
            assert!(decode::<Manifest>(junk).is_err());
        }
        // Nesting is bounded.
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(core::iter::repeat_n(0x91, MAX_DEPTH + 1));
        deep.push(0xc0);
        assert_eq!(decode::<Manifest>(&raw(SCHEMA_BYTES, &deep)), malformed());
    }
}
