//! Declarative rules: segments, variant choice for variant slots, and experiments with
//! deterministic bucketing. The config is authored as JSON and published under the `cfg` key.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::hash::{BUCKETS, bucket};
use crate::profile::{Profile, ProfileConfig};
use crate::rank::{RankParams, Strategy};
use crate::session::Session;

/// Coarse device class from the user agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Desktop,
    Mobile,
    Tablet,
}

impl DeviceClass {
    pub fn from_user_agent(ua: &str) -> Self {
        let ua = ua.as_bytes();
        let has = |needle: &str| {
            ua.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        };
        if has("ipad") || has("tablet") || (has("android") && !has("mobile")) {
            DeviceClass::Tablet
        } else if has("mobi") || has("iphone") || has("android") {
            DeviceClass::Mobile
        } else {
            DeviceClass::Desktop
        }
    }
}

/// One condition over the profile and the request. A segment holds when all of its
/// predicates do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "if", rename_all = "snake_case")]
pub enum Predicate {
    PurchasesAtLeast {
        n: u32,
    },
    CategoryAffinityAtLeast {
        category: String,
        score: f64,
    },
    VisitsAtLeast {
        n: u32,
    },
    /// No profile yet, or one visit so far.
    NewVisitor,
    /// At least two visits.
    ReturningVisitor,
    Country {
        any_of: Vec<String>,
    },
    Device {
        any_of: Vec<DeviceClass>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub all: Vec<Predicate>,
}

/// Variant rules of one variant slot: the first variant whose segment matches wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotRule {
    pub slot: String,
    pub variants: Vec<VariantRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantRule {
    pub variant: String,
    pub segment: String,
}

/// One arm of an experiment. An arm may set a variant (variant slots) or a strategy
/// (recommendation slots); the control arm changes nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub slot: String,
    /// Share of visitors enrolled, in basis points (0..=10,000).
    pub traffic_bp: u32,
    pub control: String,
    pub arms: Vec<Arm>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// A visitor's assignment to an experiment arm: what the edge records as an exposure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    pub experiment: String,
    pub arm: String,
    pub bucket: u32,
}

impl Experiment {
    /// Deterministic assignment: enrolled when the visitor's bucket is under the traffic
    /// share; the arm is chosen by a second, independent bucket in proportion to weights.
    pub fn assign(&self, visitor: &str) -> Option<Exposure> {
        if !self.active || bucket(&self.id, visitor) >= self.traffic_bp.min(BUCKETS) {
            return None;
        }
        let total: u64 = self.arms.iter().map(|a| u64::from(a.weight)).sum();
        if total == 0 {
            return None;
        }
        let arm_bucket = bucket(&self.id, &alloc::format!("{visitor}#arm"));
        let mut point = u64::from(arm_bucket) * total / u64::from(BUCKETS);
        for arm in &self.arms {
            let w = u64::from(arm.weight);
            if point < w {
                return Some(Exposure {
                    experiment: self.id.clone(),
                    arm: arm.name.clone(),
                    bucket: arm_bucket,
                });
            }
            point -= w;
        }
        None
    }

    fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }
}

/// The whole published configuration (`cfg`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub segments: Vec<Segment>,
    pub slots: Vec<SlotRule>,
    pub experiments: Vec<Experiment>,
    pub profile: ProfileConfig,
    pub rank: RankParams,
}

impl Default for Config {
    /// The demo defaults: buyers see the `returning-buyer` hero.
    fn default() -> Self {
        Config {
            segments: alloc::vec![Segment {
                name: "buyer".into(),
                all: alloc::vec![Predicate::PurchasesAtLeast { n: 1 }],
            }],
            slots: alloc::vec![SlotRule {
                slot: "hero".into(),
                variants: alloc::vec![VariantRule {
                    variant: "returning-buyer".into(),
                    segment: "buyer".into(),
                }],
            }],
            experiments: Vec::new(),
            profile: ProfileConfig::default(),
            rank: RankParams::default(),
        }
    }
}

/// What the request tells the rules besides the profile.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    pub profile: Option<&'a Profile>,
    pub session: Option<&'a Session>,
    /// Two-letter country code (from the CDN), if known.
    pub country: Option<&'a str>,
    pub device: DeviceClass,
    pub now: Millis,
}

impl RequestContext<'_> {
    fn visits(&self) -> u32 {
        self.profile.map_or(0, Profile::visit_count)
    }

    pub fn matches(&self, p: &Predicate, cfg: &ProfileConfig) -> bool {
        match p {
            Predicate::PurchasesAtLeast { n } => self.profile.map_or(0, |p| p.purchases) >= *n,
            Predicate::CategoryAffinityAtLeast { category, score } => self
                .profile
                .is_some_and(|p| p.category_affinity(category, self.now, cfg) >= *score),
            Predicate::VisitsAtLeast { n } => self.visits() >= *n,
            Predicate::NewVisitor => self.visits() <= 1,
            Predicate::ReturningVisitor => self.visits() >= 2,
            Predicate::Country { any_of } => self
                .country
                .is_some_and(|c| any_of.iter().any(|x| x.eq_ignore_ascii_case(c))),
            Predicate::Device { any_of } => any_of.contains(&self.device),
        }
    }
}

/// How a variant or strategy was chosen, for the `x-attune` debug view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "via", content = "name")]
pub enum Via {
    Default,
    Segment(String),
    Experiment(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice<T> {
    pub value: T,
    pub via: Via,
    /// Set when the visitor is enrolled in an experiment on this slot.
    pub exposure: Option<Exposure>,
}

impl Config {
    pub fn segment_matches(&self, name: &str, ctx: &RequestContext<'_>) -> bool {
        self.segments
            .iter()
            .find(|s| s.name == name)
            .is_some_and(|s| s.all.iter().all(|p| ctx.matches(p, &self.profile)))
    }

    /// Names of the segments the request falls in, in config order.
    pub fn segments_of(&self, ctx: &RequestContext<'_>) -> Vec<&str> {
        self.segments
            .iter()
            .filter(|s| s.all.iter().all(|p| ctx.matches(p, &self.profile)))
            .map(|s| s.name.as_str())
            .collect()
    }

    fn experiment_for(&self, slot: &str, visitor: &str) -> Option<(&Experiment, Exposure)> {
        self.experiments
            .iter()
            .filter(|e| e.slot == slot)
            .find_map(|e| e.assign(visitor).map(|x| (e, x)))
    }

    /// Chooses the variant of a variant slot among those the page offers. An experiment arm
    /// wins for enrolled visitors outside the control arm; then the first matching segment
    /// rule; then `default`.
    pub fn choose_variant(
        &self,
        slot: &str,
        offered: &[&str],
        ctx: &RequestContext<'_>,
        visitor: &str,
    ) -> Choice<String> {
        let exposure = self.experiment_for(slot, visitor);
        if let Some((exp, x)) = &exposure
            && x.arm != exp.control
            && let Some(v) = exp.arm(&x.arm).and_then(|a| a.variant.as_deref())
            && offered.contains(&v)
        {
            return Choice {
                value: v.into(),
                via: Via::Experiment(exp.id.clone()),
                exposure: Some(x.clone()),
            };
        }
        let exposure = exposure.map(|(_, x)| x);
        for rule in self.slots.iter().filter(|r| r.slot == slot) {
            for v in &rule.variants {
                if offered.contains(&v.variant.as_str()) && self.segment_matches(&v.segment, ctx) {
                    return Choice {
                        value: v.variant.clone(),
                        via: Via::Segment(v.segment.clone()),
                        exposure,
                    };
                }
            }
        }
        Choice {
            value: "default".into(),
            via: Via::Default,
            exposure,
        }
    }

    /// The strategy of a recommendation slot: the page's own unless an experiment arm the
    /// visitor is in overrides it.
    pub fn choose_strategy(
        &self,
        slot: &str,
        page_strategy: Strategy,
        visitor: &str,
    ) -> Choice<Strategy> {
        match self.experiment_for(slot, visitor) {
            Some((exp, x)) => {
                let arm_strategy = (x.arm != exp.control)
                    .then(|| exp.arm(&x.arm).and_then(|a| a.strategy))
                    .flatten();
                Choice {
                    value: arm_strategy.unwrap_or(page_strategy),
                    via: if arm_strategy.is_some() {
                        Via::Experiment(exp.id.clone())
                    } else {
                        Via::Default
                    },
                    exposure: Some(x),
                }
            }
            None => Choice {
                value: page_strategy,
                via: Via::Default,
                exposure: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind, SCHEMA_VERSION};
    use alloc::format;
    use alloc::vec;

    const NOW: Millis = 1_733_040_000_000;

    fn ctx(profile: Option<&Profile>) -> RequestContext<'_> {
        RequestContext {
            profile,
            session: None,
            country: Some("GB"),
            device: DeviceClass::Desktop,
            now: NOW,
        }
    }

    #[test]
    fn buyers_get_the_returning_buyer_hero() {
        let cfg = Config::default();
        let offered = ["default", "returning-buyer"];
        let c = cfg.choose_variant("hero", &offered, &ctx(None), "v1");
        assert_eq!((c.value.as_str(), &c.via), ("default", &Via::Default));
        let mut p = Profile::default();
        p.apply(
            &Event {
                v: SCHEMA_VERSION,
                event_id: "e".into(),
                user: "u".into(),
                ts: NOW,
                kind: EventKind::Purchase,
                item: Some("a".into()),
                props: Default::default(),
            },
            None,
            &cfg.profile,
        );
        let c = cfg.choose_variant("hero", &offered, &ctx(Some(&p)), "v1");
        assert_eq!(c.value, "returning-buyer");
        assert_eq!(c.via, Via::Segment("buyer".into()));
        // A variant the page does not offer is never chosen.
        let c = cfg.choose_variant("hero", &["default"], &ctx(Some(&p)), "v1");
        assert_eq!(c.value, "default");
    }

    #[test]
    fn experiments_split_deterministically_by_weight() {
        let exp = Experiment {
            id: "hero-test".into(),
            slot: "hero".into(),
            traffic_bp: 5_000,
            control: "control".into(),
            arms: vec![
                Arm {
                    name: "control".into(),
                    weight: 1,
                    variant: None,
                    strategy: None,
                },
                Arm {
                    name: "bold".into(),
                    weight: 3,
                    variant: Some("bold".into()),
                    strategy: None,
                },
            ],
            active: true,
        };
        let (mut enrolled, mut bold) = (0, 0);
        for i in 0..4_000 {
            let v = format!("visitor-{i}");
            let a = exp.assign(&v);
            assert_eq!(a, exp.assign(&v), "stable");
            if let Some(x) = a {
                enrolled += 1;
                bold += usize::from(x.arm == "bold");
            }
        }
        assert!((1_850..2_150).contains(&enrolled), "{enrolled}");
        assert!((1_350..1_650).contains(&bold), "{bold}");
        let cfg = Config {
            experiments: vec![exp],
            ..Config::default()
        };
        let chosen: usize = (0..200)
            .filter(|i| {
                cfg.choose_variant(
                    "hero",
                    &["default", "bold"],
                    &ctx(None),
                    &format!("visitor-{i}"),
                )
                .value
                    == "bold"
            })
            .count();
        assert!(chosen > 50 && chosen < 100, "{chosen}");
    }

    #[test]
    fn predicates() {
        let c = ctx(None);
        let cfg = ProfileConfig::default();
        assert!(c.matches(&Predicate::NewVisitor, &cfg));
        assert!(!c.matches(&Predicate::ReturningVisitor, &cfg));
        assert!(c.matches(
            &Predicate::Country {
                any_of: vec!["gb".into()]
            },
            &cfg
        ));
        assert!(!c.matches(
            &Predicate::Device {
                any_of: vec![DeviceClass::Mobile]
            },
            &cfg
        ));
        assert_eq!(
            DeviceClass::from_user_agent(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"
            ),
            DeviceClass::Mobile
        );
        assert_eq!(
            DeviceClass::from_user_agent("Mozilla/5.0 (iPad; CPU OS 17_0)"),
            DeviceClass::Tablet
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn config_reads_from_json() {
        let json = r#"{"segments":[{"name":"mug-lovers","all":[{"if":"category_affinity_at_least","category":"Mugs","score":2.0},{"if":"device","any_of":["mobile"]}]}],
            "experiments":[{"id":"recs","slot":"recs","traffic_bp":10000,"control":"a","arms":[{"name":"a","weight":1},{"name":"b","weight":1,"strategy":"trending"}]}]}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.segments[0].all.len(), 2);
        assert_eq!(cfg.rank, RankParams::default());
        let s = cfg.choose_strategy("recs", Strategy::ForYou, "v");
        assert!(s.exposure.is_some());
    }
}
