//! The slot fill: fills `data-attune-item` fields and attributes of each slot from the core's
//! picks, keeps the chosen variant of variant slots, and reads the page's
//! `<meta name="attune:item">`, as the elements stream past.
//!
//! [`Fill`] decides what goes into each slot and writes it through [`SlotElement`], the parts
//! of lol_html's element API it uses; [`PageRewriter`] drives it with the lol_html crate over
//! the page's chunks (`rewrite/lol.rs`). The Worker runs that inside the wasm: driving
//! workerd's own `HTMLRewriter` from Rust instead (every matched element a call into the
//! wasm, the page's bytes never in it) was measured to cost more CPU per request (see
//! ARCHITECTURE.md, the edge).
//!
//! A slot's strategy, count and category are only known when its opening tag streams past, so
//! ranking happens right there, inside the element handler: the data was loaded before the
//! first chunk entered the rewriter and `attune_core::rank` is synchronous and cheap. The
//! picks are kept per slot for its items and reported for the debug view and impressions.

use std::rc::Rc;

use attune_core::model::CatalogView;
use attune_core::rules::{DeviceClass, Exposure, RequestContext, Via};
use attune_core::{CatalogItem, Millis, Pick, Profile, RankInput, Session, Strategy, rank};
use serde::Serialize;

use crate::data::Model;
use crate::escape::{self, Charset};

mod lol;
pub use lol::{PageRewriter, rewrite_all};

/// Largest `data-attune-count` honoured.
pub const MAX_COUNT: usize = 24;
const DEFAULT_COUNT: usize = 4;

/// What the rewrite decides from.
#[derive(Debug)]
pub struct Inputs {
    pub now: Millis,
    /// The identity experiments bucket on.
    pub visitor: String,
    pub profile: Option<Profile>,
    pub session: Option<Session>,
    /// `None`: default content (slots keep the author's defaults, variant slots `default`).
    pub model: Option<Rc<Model>>,
    pub country: Option<String>,
    pub device: DeviceClass,
    /// What the response's `Content-Type` says of the page's charset. A page without one that
    /// declares UTF-8 in a `<meta>` within its first 1024 bytes (where browsers look) is
    /// written as UTF-8 from there on.
    pub charset: Charset,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlotKind {
    Recs {
        strategy: String,
        picks: Vec<Pick>,
        /// Items actually written into the page (what impressions record).
        rendered: Vec<String>,
        /// The exclusion this slot was ranked with: the items the page's earlier slots picked.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        excluded: Vec<String>,
    },
    Variant {
        chosen: String,
        offered: Vec<String>,
    },
    /// Left as the author wrote it.
    Default { reason: &'static str },
}

#[derive(Clone, Debug, Serialize)]
pub struct SlotReport {
    pub slot: String,
    #[serde(flatten)]
    pub kind: SlotKind,
    pub via: Via,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
    #[serde(skip)]
    pub name: String,
}

/// What the rewrite did, for headers, the debug view and impressions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub page_item: Option<String>,
    pub slots: Vec<SlotReport>,
    /// Set when lol_html failed mid-stream (the rest of the page passed through raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a driver needs of an element: the parts of lol_html's element API the slot fill uses.
/// Setters that fail (an attribute name the parser refuses) leave the element as it was.
pub trait SlotElement {
    fn attr(&self, name: &str) -> Option<String>;
    fn set_attr(&mut self, name: &str, value: &str);
    fn remove_attr(&mut self, name: &str);
    /// Replaces the element's content with `html` (markup, not text).
    fn set_inner_html(&mut self, html: &str);
    fn remove(&mut self);
    fn can_have_content(&self) -> bool;
}

/// Which [`Fill`] method an element matched by a selector goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PageItem,
    Slot,
    Item,
    Field,
    Attr,
    Variant,
}

/// The selectors a driver registers, in this order (lol_html calls the handlers of one element
/// in registration order: a slot opens before its own `data-attune-item`, say).
pub const SELECTORS: [(&str, Hook); 6] = [
    (r#"meta[name="attune:item"]"#, Hook::PageItem),
    ("[data-attune-slot]", Hook::Slot),
    ("[data-attune-item]", Hook::Item),
    ("[data-attune-field]", Hook::Field),
    ("[data-attune-attr]", Hook::Attr),
    ("[data-attune-variant]", Hook::Variant),
];

/// One page's slot fill, told each matched element in page order.
#[derive(Debug)]
pub struct Fill {
    inputs: Inputs,
    report: Report,
    /// Index in `report.slots` of the slot being streamed.
    slot: Option<usize>,
    items_seen: usize,
    item: Option<CatalogItem>,
    /// Every item picked by the page's slots so far, in page order: later slots exclude them.
    picked: Vec<String>,
}

impl Fill {
    pub fn new(inputs: Inputs) -> Self {
        Fill {
            inputs,
            report: Report::default(),
            slot: None,
            items_seen: 0,
            item: None,
            picked: Vec::new(),
        }
    }

    /// Sends a matched element to its hook. `true`: the driver calls [`Fill::end_tag`] with the
    /// same hook when the element's end tag streams past.
    pub fn element(&mut self, hook: Hook, el: &mut impl SlotElement) -> bool {
        match hook {
            Hook::PageItem => {
                self.read_page_item(el);
                false
            }
            Hook::Slot => self.slot(el),
            Hook::Item => self.item(el),
            Hook::Field => {
                self.field(el);
                false
            }
            Hook::Attr => {
                self.attrs(el);
                false
            }
            Hook::Variant => {
                self.variant(el);
                false
            }
        }
    }

    /// The end tag of an element whose [`Fill::element`] asked for it.
    pub fn end_tag(&mut self, hook: Hook) {
        match hook {
            Hook::Slot => {
                self.slot = None;
                self.item = None;
            }
            Hook::Item => self.item = None,
            _ => {}
        }
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The page declared itself UTF-8 (a `<meta>` where browsers look for one).
    pub fn declared_utf8(&mut self) {
        self.inputs.charset = Charset::Utf8;
    }

    pub fn page_item(&self) -> Option<&str> {
        self.report.page_item.as_deref()
    }

    /// Records that the rewriter failed.
    pub fn failed(&mut self, err: String) {
        self.report.error = Some(err);
    }

    fn read_page_item(&mut self, el: &impl SlotElement) {
        if let Some(item) = el.attr("content") {
            let item = item.trim();
            if !item.is_empty()
                && item.len() <= attune_core::session::MAX_ITEM_ID
                && item.bytes().all(|b| b.is_ascii_graphic())
            {
                self.report.page_item = Some(item.to_owned());
            }
        }
    }

    fn slot(&mut self, el: &impl SlotElement) -> bool {
        if self.slot.is_some() || !el.can_have_content() {
            return false; // nested or void slots are left alone
        }
        let name = el.attr("data-attune-slot").unwrap_or_default();
        let report = self.open_slot(el, name);
        self.report.slots.push(report);
        self.slot = Some(self.report.slots.len() - 1);
        self.items_seen = 0;
        self.item = None;
        true
    }

    fn item(&mut self, el: &mut impl SlotElement) -> bool {
        let n = self.items_seen;
        let model = self.inputs.model.clone();
        let charset = self.inputs.charset;
        let Some(SlotReport {
            kind: SlotKind::Recs {
                picks, rendered, ..
            },
            ..
        }) = self.current()
        else {
            return false;
        };
        let item = picks
            .get(n)
            .and_then(|p| model.as_ref().and_then(|m| m.item(&p.item)))
            .cloned();
        if let Some(item) = &item {
            rendered.push(item.id.clone());
            el.set_attr("data-attune-item", &escape::attr_value(&item.id, charset));
        }
        self.items_seen += 1;
        self.item = item;
        el.can_have_content()
    }

    fn field(&mut self, el: &mut impl SlotElement) {
        if let Some(item) = &self.item
            && let Some(field) = el.attr("data-attune-field")
            && let Some(value) = field_value(item, field.trim())
        {
            el.set_inner_html(&escape::text_html(value, self.inputs.charset));
        }
    }

    fn attrs(&mut self, el: &mut impl SlotElement) {
        if let Some(item) = &self.item
            && let Some(spec) = el.attr("data-attune-attr")
        {
            set_attrs(el, &spec, item, self.inputs.charset);
        }
    }

    fn variant(&mut self, el: &mut impl SlotElement) {
        if let Some(SlotReport {
            kind: SlotKind::Variant { chosen, .. },
            ..
        }) = self.current()
        {
            let name = el.attr("data-attune-variant").unwrap_or_default();
            if name.trim() == chosen.as_str() {
                el.remove_attr("hidden");
            } else {
                el.remove();
            }
        }
    }

    fn open_slot(&mut self, el: &impl SlotElement, name: String) -> SlotReport {
        let strategy_attr = el.attr("data-attune-strategy");
        let Some(model) = self.inputs.model.clone() else {
            let kind = match strategy_attr {
                Some(_) => SlotKind::Default { reason: "no-data" },
                None => SlotKind::Variant {
                    chosen: "default".into(),
                    offered: Vec::new(),
                },
            };
            return SlotReport {
                slot: name.clone(),
                name,
                kind,
                via: Via::Default,
                exposure: None,
            };
        };
        let cfg = &model.config;
        let visitor = self.inputs.visitor.as_str();
        if let Some(strategy) = strategy_attr {
            let Some(strategy) = Strategy::parse(strategy.trim()) else {
                return SlotReport {
                    slot: name.clone(),
                    name,
                    kind: SlotKind::Default {
                        reason: "unknown-strategy",
                    },
                    via: Via::Default,
                    exposure: None,
                };
            };
            let count = el
                .attr("data-attune-count")
                .and_then(|c| c.trim().parse::<usize>().ok())
                .unwrap_or(DEFAULT_COUNT)
                .min(MAX_COUNT);
            let category = el.attr("data-attune-category");
            let choice = cfg.choose_strategy(&name, strategy, visitor);
            let picks = rank(&RankInput {
                strategy: choice.value,
                count,
                profile: self.inputs.profile.as_ref(),
                profile_config: &cfg.profile,
                session: self.inputs.session.as_ref(),
                page_item: self.report.page_item.as_deref(),
                category: category.as_deref(),
                catalog: &*model,
                neighbours: &*model,
                trending: &model.trending,
                params: &cfg.rank,
                now: self.inputs.now,
                exclude: &self.picked,
            });
            let excluded = self.picked.clone();
            self.picked.extend(picks.iter().map(|p| p.item.clone()));
            SlotReport {
                slot: name.clone(),
                name,
                kind: SlotKind::Recs {
                    strategy: choice.value.as_str().into(),
                    picks,
                    rendered: Vec::new(),
                    excluded,
                },
                via: choice.via,
                exposure: choice.exposure,
            }
        } else {
            // The variants a slot offers stream past after its opening tag; the slot may list
            // them (`data-attune-variants="default returning-buyer"`), otherwise every variant
            // the config can choose for it counts as offered.
            let offered: Vec<String> = match el.attr("data-attune-variants") {
                Some(list) => list.split_whitespace().map(str::to_owned).collect(),
                None => {
                    let mut v = vec!["default".to_owned()];
                    for r in cfg.slots.iter().filter(|r| r.slot == name) {
                        v.extend(r.variants.iter().map(|x| x.variant.clone()));
                    }
                    for e in cfg.experiments.iter().filter(|e| e.slot == name) {
                        v.extend(e.arms.iter().filter_map(|a| a.variant.clone()));
                    }
                    v
                }
            };
            let offered_refs: Vec<&str> = offered.iter().map(String::as_str).collect();
            let ctx = RequestContext {
                profile: self.inputs.profile.as_ref(),
                session: self.inputs.session.as_ref(),
                country: self.inputs.country.as_deref(),
                device: self.inputs.device,
                now: self.inputs.now,
            };
            let choice = cfg.choose_variant(&name, &offered_refs, &ctx, visitor);
            SlotReport {
                slot: name.clone(),
                name,
                kind: SlotKind::Variant {
                    chosen: choice.value,
                    offered,
                },
                via: choice.via,
                exposure: choice.exposure,
            }
        }
    }

    fn current(&mut self) -> Option<&mut SlotReport> {
        self.slot.and_then(|i| self.report.slots.get_mut(i))
    }
}

fn set_attrs(el: &mut impl SlotElement, spec: &str, item: &CatalogItem, charset: Charset) {
    // `href:url src:image alt:title` (whitespace- or comma-separated).
    for pair in spec.split([' ', ',', '\t', '\n']).filter(|p| !p.is_empty()) {
        let Some((attr, field)) = pair.split_once(':') else {
            continue;
        };
        if !escape::allowed_attr(attr) {
            continue;
        }
        let Some(value) = field_value(item, field) else {
            continue;
        };
        let value = if escape::is_url_attr(attr) || matches!(field, "url" | "image") {
            match escape::safe_url(value) {
                Some(v) => v,
                None => continue,
            }
        } else {
            value
        };
        el.set_attr(attr, &escape::attr_value(value, charset));
    }
}

fn field_value<'a>(item: &'a CatalogItem, field: &str) -> Option<&'a str> {
    Some(match field {
        "id" => &item.id,
        "title" => &item.title,
        "url" => &item.url,
        "image" => &item.image,
        "price" => &item.price,
        "category" => &item.category,
        _ => return None,
    })
}

/// `<meta charset="utf-8">` or `<meta http-equiv="content-type" content="...; charset=utf-8">`.
pub fn declares_utf8(el: &impl SlotElement) -> bool {
    if let Some(charset) = el.attr("charset") {
        return escape::is_utf8_label(&charset);
    }
    let content_type = el
        .attr("http-equiv")
        .is_some_and(|h| h.trim().eq_ignore_ascii_case("content-type"));
    content_type && Charset::of_content_type(el.attr("content").as_deref()) == Charset::Utf8
}
