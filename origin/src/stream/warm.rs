//! Cache warming for the apply and encode loops.

use std::sync::Arc;

use foldhash::HashMap as FoldHashMap;

use super::live::{self, Cached, UserKey};

/// How many users' states [`warm`] brings into cache ahead of applying events to them or
/// encoding them (a chunk's heads stay well within L2).
pub(super) const WARM_AHEAD: usize = 64;

/// Reads the parts of these users' states that applying an event or encoding the state
/// touches first (the map entry, the state, the heads of its lists and the first bytes behind
/// them), in a loop whose iterations do not depend on each other, so the processor overlaps
/// their cache misses instead of meeting them one after another inside `Profile::apply` or the
/// encoder (random users in a large map: a miss per level, several per user). With
/// `unpublished`, also the users' entries there (the apply loop's other lookup). The sum is
/// meaningless and only kept from being optimized away.
pub(super) fn warm<'a>(
    users: &FoldHashMap<UserKey, Cached>,
    unpublished: Option<&FoldHashMap<UserKey, (Arc<str>, live::Unpublished)>>,
    keys: impl Iterator<Item = &'a UserKey>,
) {
    fn head<T>(list: &[T], f: impl Fn(&T) -> u64) -> u64 {
        list.first().map_or(0, f)
    }
    let mut sum = 0u64;
    for key in keys {
        if let Some(c) = users.get(key) {
            let p = &c.state.profile;
            let first_byte = |k: &str| u64::from(k.as_bytes().first().copied().unwrap_or(0));
            sum = sum
                .wrapping_add(p.version)
                .wrapping_add(head(&p.visits, |v| v.0))
                .wrapping_add(head(&p.items, |a| first_byte(&a.key)))
                .wrapping_add(head(&p.categories, |a| first_byte(&a.key)))
                .wrapping_add(head(&c.state.recent_ids, |r| u64::from(*r)))
                .wrapping_add(c.user.len() as u64);
        }
        if let Some(unpublished) = unpublished {
            sum = sum.wrapping_add(unpublished.get(key).map_or(0, |u| u.1.version));
        }
    }
    std::hint::black_box(sum);
}
