//! The streaming rewrite (lol_html): fills `data-attune-item` fields and attributes of each
//! slot from the core's picks, keeps the chosen variant of variant slots, and reads the page's
//! `<meta name="attune:item">`, all in one pass over the chunks as they arrive.
//!
//! A slot's strategy, count and category are only known when its opening tag streams past, so
//! ranking happens right there, inside the element handler: the data was loaded before the
//! first chunk entered the rewriter and `attune_core::rank` is synchronous and cheap. The
//! picks are kept per slot for its items and reported for the debug view and impressions.

use std::cell::RefCell;
use std::rc::Rc;

use attune_core::model::CatalogView;
use attune_core::rules::{DeviceClass, Exposure, RequestContext, Via};
use attune_core::{CatalogItem, Millis, Pick, Profile, RankInput, Session, Strategy, rank};
use lol_html::html_content::{ContentType, Element};
use lol_html::{HtmlRewriter, OutputSink, Settings, element, end_tag};
use serde::Serialize;

use crate::data::Model;
use crate::escape::{self, Charset};

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

struct State {
    inputs: Inputs,
    report: Report,
    /// Index in `report.slots` of the slot being streamed.
    slot: Option<usize>,
    items_seen: usize,
    item: Option<CatalogItem>,
    /// Every item picked by the page's slots so far, in page order: later slots exclude them.
    picked: Vec<String>,
}

impl State {
    fn open_slot(&mut self, el: &Element<'_, '_>, name: String) -> SlotReport {
        let strategy_attr = el.get_attribute("data-attune-strategy");
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
                .get_attribute("data-attune-count")
                .and_then(|c| c.trim().parse::<usize>().ok())
                .unwrap_or(DEFAULT_COUNT)
                .min(MAX_COUNT);
            let category = el.get_attribute("data-attune-category");
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
            let offered: Vec<String> = match el.get_attribute("data-attune-variants") {
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

type Shared = Rc<RefCell<State>>;

/// Runs `f` on the state unless it is (impossibly) borrowed already: never panics.
fn with<R: Default>(state: &Shared, f: impl FnOnce(&mut State) -> R) -> R {
    match state.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => R::default(),
    }
}

fn set_attrs(el: &mut Element<'_, '_>, spec: &str, item: &CatalogItem, charset: Charset) {
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
        let _ = el.set_attribute(attr, &escape::attr_value(value, charset));
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

/// How far into a page browsers look for a `<meta>` charset declaration (the HTML standard's
/// prescan).
const META_PRESCAN_BYTES: usize = 1024;

/// `<meta charset="utf-8">` or `<meta http-equiv="content-type" content="...; charset=utf-8">`.
fn declares_utf8(el: &Element<'_, '_>) -> bool {
    if let Some(charset) = el.get_attribute("charset") {
        return escape::is_utf8_label(&charset);
    }
    let content_type = el
        .get_attribute("http-equiv")
        .is_some_and(|h| h.trim().eq_ignore_ascii_case("content-type"));
    content_type
        && Charset::of_content_type(el.get_attribute("content").as_deref()) == Charset::Utf8
}

/// Collects the rewriter's output between writes.
struct Sink(Rc<RefCell<Vec<u8>>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        if let Ok(mut out) = self.0.try_borrow_mut() {
            out.extend_from_slice(chunk);
        }
    }
}

/// One page's streaming rewrite. Feed chunks with [`write`](Self::write) and send what each
/// returns; [`end`](Self::end) flushes the rest and gives the report.
pub struct PageRewriter {
    rewriter: Option<HtmlRewriter<'static, Sink>>,
    out: Rc<RefCell<Vec<u8>>>,
    state: Shared,
}

impl std::fmt::Debug for PageRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRewriter").finish_non_exhaustive()
    }
}

impl PageRewriter {
    pub fn new(inputs: Inputs) -> Self {
        let state: Shared = Rc::new(RefCell::new(State {
            inputs,
            report: Report::default(),
            slot: None,
            items_seen: 0,
            item: None,
            picked: Vec::new(),
        }));
        let out = Rc::new(RefCell::new(Vec::new()));
        let (s0, s1, s2, s3, s4, s5, s6) = (
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
        );
        let settings = Settings::new()
            .with_strict(false)
            .append_element_content_handler(element!("meta", move |el| {
                if el.source_location().bytes().end <= META_PRESCAN_BYTES && declares_utf8(el) {
                    with(&s0, |s| s.inputs.charset = Charset::Utf8);
                }
                Ok(())
            }))
            .append_element_content_handler(element!(r#"meta[name="attune:item"]"#, move |el| {
                if let Some(item) = el.get_attribute("content") {
                    let item = item.trim();
                    if !item.is_empty()
                        && item.len() <= attune_core::session::MAX_ITEM_ID
                        && item.bytes().all(|b| b.is_ascii_graphic())
                    {
                        with(&s1, |s| s.report.page_item = Some(item.to_owned()));
                    }
                }
                Ok(())
            }))
            .append_element_content_handler(element!("[data-attune-slot]", move |el| {
                let state = s2.clone();
                let opened = with(&s2, |s| {
                    if s.slot.is_some() || !el.can_have_content() {
                        return false; // nested or void slots are left alone
                    }
                    let name = el.get_attribute("data-attune-slot").unwrap_or_default();
                    let report = s.open_slot(el, name);
                    s.report.slots.push(report);
                    s.slot = Some(s.report.slots.len() - 1);
                    s.items_seen = 0;
                    s.item = None;
                    true
                });
                if opened {
                    el.on_end_tag(end_tag!(move |_| {
                        with(&state, |s| {
                            s.slot = None;
                            s.item = None;
                        });
                        Ok(())
                    }))?;
                }
                Ok(())
            }))
            .append_element_content_handler(element!("[data-attune-item]", move |el| {
                let state = s3.clone();
                let filled = with(&s3, |s| {
                    let n = s.items_seen;
                    let model = s.inputs.model.clone();
                    let Some(SlotReport {
                        kind:
                            SlotKind::Recs {
                                picks, rendered, ..
                            },
                        ..
                    }) = s.current()
                    else {
                        return false;
                    };
                    let item = picks
                        .get(n)
                        .and_then(|p| model.as_ref().and_then(|m| m.item(&p.item)))
                        .cloned();
                    if let Some(item) = &item {
                        rendered.push(item.id.clone());
                    }
                    s.items_seen += 1;
                    s.item = item;
                    if let Some(item) = &s.item {
                        let charset = s.inputs.charset;
                        let _ = el.set_attribute(
                            "data-attune-item",
                            &escape::attr_value(&item.id, charset),
                        );
                    }
                    true
                });
                if filled && el.can_have_content() {
                    el.on_end_tag(end_tag!(move |_| {
                        with(&state, |s| s.item = None);
                        Ok(())
                    }))?;
                }
                Ok(())
            }))
            .append_element_content_handler(element!("[data-attune-field]", move |el| {
                with(&s4, |s| {
                    if let (Some(item), Some(field)) =
                        (&s.item, el.get_attribute("data-attune-field"))
                        && let Some(value) = field_value(item, field.trim())
                    {
                        let html = escape::text_html(value, s.inputs.charset);
                        el.set_inner_content(&html, ContentType::Html);
                    }
                });
                Ok(())
            }))
            .append_element_content_handler(element!("[data-attune-attr]", move |el| {
                with(&s5, |s| {
                    if let (Some(item), Some(spec)) =
                        (&s.item, el.get_attribute("data-attune-attr"))
                    {
                        set_attrs(el, &spec, item, s.inputs.charset);
                    }
                });
                Ok(())
            }))
            .append_element_content_handler(element!("[data-attune-variant]", move |el| {
                with(&s6, |s| {
                    if let Some(SlotReport {
                        kind: SlotKind::Variant { chosen, .. },
                        ..
                    }) = s.current()
                    {
                        let name = el.get_attribute("data-attune-variant").unwrap_or_default();
                        if name.trim() == chosen.as_str() {
                            el.remove_attribute("hidden");
                        } else {
                            el.remove();
                        }
                    }
                });
                Ok(())
            }));
        let rewriter = HtmlRewriter::new(settings, Sink(out.clone()));
        PageRewriter {
            rewriter: Some(rewriter),
            out,
            state,
        }
    }

    fn take(&self) -> Vec<u8> {
        self.out
            .try_borrow_mut()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    fn fail(&mut self, err: String) {
        self.rewriter = None;
        with(&self.state, |s| s.report.error = Some(err));
    }

    /// Rewrites one chunk; returns the output ready to send (may be empty while lol_html holds
    /// an unfinished tag). After a rewrite error the remaining input passes through raw.
    pub fn write(&mut self, chunk: &[u8]) -> Vec<u8> {
        match self.rewriter.as_mut() {
            None => return chunk.to_vec(),
            Some(rw) => {
                if let Err(e) = rw.write(chunk) {
                    self.fail(e.to_string());
                    let mut out = self.take();
                    out.extend_from_slice(chunk);
                    return out;
                }
            }
        }
        self.take()
    }

    /// Flushes the rewriter; returns the last output and the report.
    pub fn end(mut self) -> (Vec<u8>, Report) {
        if let Some(rw) = self.rewriter.take()
            && let Err(e) = rw.end()
        {
            self.fail(e.to_string());
        }
        let out = self.take();
        (out, self.report())
    }

    /// The report so far (slots seen until now).
    pub fn report(&self) -> Report {
        with(&self.state, |s| s.report.clone())
    }

    pub fn page_item(&self) -> Option<String> {
        with(&self.state, |s| s.report.page_item.clone())
    }
}

/// Rewrites a whole document at once (tests, the debug view).
pub fn rewrite_all(inputs: Inputs, html: &[u8], chunk: usize) -> (Vec<u8>, Report) {
    let mut rw = PageRewriter::new(inputs);
    let mut out = Vec::new();
    for c in html.chunks(chunk.max(1)) {
        out.extend(rw.write(c));
    }
    let (rest, report) = rw.end();
    out.extend(rest);
    (out, report)
}
