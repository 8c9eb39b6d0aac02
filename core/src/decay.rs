//! Exponentially decayed scores that add up in any order.
//!
//! A naive decayed score (`s = s * decay(dt) + w`) depends on the order events arrive in, and
//! float sums depend on it too. Attune needs the same profile whatever order the events of the
//! allowed-lateness window arrive in, so scores are kept as **integer fixed-point sums relative
//! to a reference time**: an event at `ts` contributes `round(w * 2^((ts - ref) / half_life))`,
//! and integer addition is commutative and associative.
//!
//! The reference cannot stay fixed forever (the factor would overflow), so time is cut into
//! epochs of [`EPOCH_MS`] and each accumulator keeps three buckets:
//! - `cur`: events of the profile's current epoch, relative to the epoch's start;
//! - `prev`: events of the epoch before, relative to that epoch's start;
//! - `base`: everything older, folded (rounded) into `prev`'s reference.
//!
//! Moving to a new epoch moves `cur` into `prev` untouched and folds only buckets no event
//! within the allowed lateness can reach any more (an epoch is far longer than any lateness),
//! so the fold sees complete buckets and its rounding is a function of the event set alone.

use serde::{Deserialize, Serialize};

use crate::{DAY_MS, Millis};

/// Length of one decay epoch. Must stay far above the pipeline's allowed lateness.
pub const EPOCH_MS: Millis = 7 * DAY_MS;

/// Fixed-point scale: a weight of 1.0 is stored as 65,536.
pub const SCALE: f64 = 65_536.0;

/// The epoch a timestamp falls in.
pub fn epoch_of(ts: Millis) -> u32 {
    u32::try_from(ts / EPOCH_MS).unwrap_or(u32::MAX)
}

fn epoch_start(epoch: u32) -> Millis {
    u64::from(epoch) * EPOCH_MS
}

/// `2^(delta_ms / half_life_ms)` computed with `libm`, so wasm and native agree bit for bit.
fn growth(delta_ms: i64, half_life_ms: Millis) -> f64 {
    let half_life = half_life_ms.max(1) as f64;
    libm::exp2(delta_ms as f64 / half_life)
}

fn fixed(value: f64) -> i64 {
    // `as` saturates on overflow and maps NaN to 0, which is what a score wants.
    libm::round(value) as i64
}

/// One decayed score: `[base, prev, cur]` in fixed point. Serialized as a three-element array
/// to keep snapshots small.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acc(pub i64, pub i64, pub i64);

impl Acc {
    pub fn is_zero(&self) -> bool {
        self.0 == 0 && self.1 == 0 && self.2 == 0
    }

    /// Adds `weight` observed at `ts`, for a holder whose current epoch is `epoch`.
    /// The caller has already advanced the holder to `max(epoch, epoch_of(ts))`.
    pub fn add(&mut self, epoch: u32, ts: Millis, weight: f64, half_life_ms: Millis) {
        self.add_contribution(Contribution::new(epoch, ts, weight, half_life_ms));
    }

    /// Adds a precomputed [`Contribution`]: exactly [`Acc::add`] with the same arguments.
    #[inline]
    pub fn add_contribution(&mut self, c: Contribution) {
        let bucket = match c.bucket {
            Bucket::Cur => &mut self.2,
            Bucket::Prev => &mut self.1,
            Bucket::Base => &mut self.0,
        };
        *bucket = bucket.saturating_add(c.value);
    }

    /// Moves the accumulator from epoch `from` to epoch `to` (`to > from`).
    pub fn advance(&mut self, from: u32, to: u32, half_life_ms: Millis) {
        debug_assert!(to > from);
        let steps = i64::from(to - from);
        let Acc(base, prev, cur) = *self;
        let older = base.saturating_add(prev) as f64;
        let epoch = EPOCH_MS as i64;
        if steps == 1 {
            *self = Acc(fixed(older * growth(-epoch, half_life_ms)), cur, 0);
        } else {
            let folded = fixed(older * growth(-steps * epoch, half_life_ms)).saturating_add(fixed(
                cur as f64 * growth(-(steps - 1) * epoch, half_life_ms),
            ));
            *self = Acc(folded, 0, 0);
        }
    }

    /// The score at `now`, as a plain number (weight units).
    pub fn value_at(&self, epoch: u32, now: Millis, half_life_ms: Millis) -> f64 {
        self.value_with(&DecayAt::new(epoch, now, half_life_ms))
    }

    /// The score with precomputed decay factors: exactly [`Acc::value_at`] for the same
    /// `(epoch, now, half_life)`, without its two `exp2` calls.
    #[inline]
    pub fn value_with(&self, decay: &DecayAt) -> f64 {
        let older = self.0.saturating_add(self.1) as f64 * decay.older;
        let current = self.2 as f64 * decay.current;
        (older + current) / SCALE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Base,
    Prev,
    Cur,
}

/// What one observation adds to an accumulator: its bucket and fixed-point value. It depends on
/// the holder's epoch, the time, the weight and the half-life only, so one event that touches
/// several accumulators (an item and its category) computes it (and its `exp2`) once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contribution {
    bucket: Bucket,
    value: i64,
}

impl Contribution {
    /// `weight` observed at `ts`, for a holder whose current epoch is `epoch`.
    pub fn new(epoch: u32, ts: Millis, weight: f64, half_life_ms: Millis) -> Self {
        let ts_epoch = epoch_of(ts);
        let (bucket, reference) = if ts_epoch >= epoch {
            (Bucket::Cur, epoch_start(epoch))
        } else if ts_epoch + 1 == epoch {
            (Bucket::Prev, epoch_start(epoch - 1))
        } else {
            // Older than the previous epoch: far beyond any allowed lateness. Fold it straight
            // into the base, relative to the previous epoch's start.
            (Bucket::Base, epoch_start(epoch.saturating_sub(1)))
        };
        let delta = ts as i64 - reference as i64;
        Contribution {
            bucket,
            value: fixed(weight * growth(delta, half_life_ms) * SCALE),
        }
    }
}

/// The two decay factors [`Acc::value_at`] needs for one `(epoch, now, half_life)`. They do
/// not depend on the accumulator, so scoring a whole list computes them once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecayAt {
    older: f64,
    current: f64,
}

impl DecayAt {
    pub fn new(epoch: u32, now: Millis, half_life_ms: Millis) -> Self {
        let cur_ref = epoch_start(epoch) as i64;
        let prev_ref = epoch_start(epoch.saturating_sub(1)) as i64;
        let now = now as i64;
        DecayAt {
            older: growth(prev_ref - now, half_life_ms),
            current: growth(cur_ref - now, half_life_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HL: Millis = 3 * DAY_MS;

    #[test]
    fn one_event_decays_by_half_per_half_life() {
        let t0 = 1_733_040_000_000;
        let epoch = epoch_of(t0);
        let mut acc = Acc::default();
        acc.add(epoch, t0, 2.0, HL);
        let now = acc.value_at(epoch, t0, HL);
        let later = acc.value_at(epoch, t0 + HL, HL);
        assert!((now - 2.0).abs() < 1e-4, "{now}");
        assert!((later - 1.0).abs() < 1e-4, "{later}");
    }

    #[test]
    fn advancing_keeps_the_value() {
        let t0 = 1_733_040_000_000;
        let e = epoch_of(t0);
        let mut acc = Acc::default();
        acc.add(e, t0, 1.0, HL);
        let probe = t0 + 20 * DAY_MS;
        let before = acc.value_at(e, probe, HL);
        for to in [e + 1, e + 3] {
            let mut moved = acc;
            moved.advance(e, to, HL);
            let after = moved.value_at(to, probe, HL);
            assert!((before - after).abs() < 1e-4, "{before} vs {after}");
        }
    }

    #[test]
    fn events_straddling_an_epoch_boundary_commute() {
        let boundary = epoch_start(epoch_of(1_733_040_000_000) + 1);
        let (a, b) = (boundary - 1_000, boundary + 1_000);
        let apply = |order: [Millis; 2]| {
            let mut epoch = epoch_of(order[0]);
            let mut acc = Acc::default();
            for ts in order {
                let e = epoch_of(ts);
                if e > epoch {
                    acc.advance(epoch, e, HL);
                    epoch = e;
                }
                acc.add(epoch, ts, 1.0, HL);
            }
            (epoch, acc)
        };
        assert_eq!(apply([a, b]), apply([b, a]));
    }
}
