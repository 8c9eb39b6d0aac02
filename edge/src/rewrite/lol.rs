//! The slot fill driven by the lol_html crate, over the page's chunks as they arrive.

use std::cell::RefCell;
use std::rc::Rc;

use lol_html::html_content::{ContentType, Element};
use lol_html::{ElementContentHandlers, HtmlRewriter, OutputSink, Selector, Settings, element};

use super::{Fill, Inputs, Report, SELECTORS, SlotElement, declares_utf8};

impl SlotElement for Element<'_, '_> {
    fn attr(&self, name: &str) -> Option<String> {
        self.get_attribute(name)
    }

    fn set_attr(&mut self, name: &str, value: &str) {
        let _ = self.set_attribute(name, value);
    }

    fn remove_attr(&mut self, name: &str) {
        self.remove_attribute(name);
    }

    fn set_inner_html(&mut self, html: &str) {
        self.set_inner_content(html, ContentType::Html);
    }

    fn remove(&mut self) {
        Element::remove(self);
    }

    fn can_have_content(&self) -> bool {
        Element::can_have_content(self)
    }
}

type Shared = Rc<RefCell<Fill>>;

/// How far into a page browsers look for a `<meta>` charset declaration (the HTML standard's
/// prescan).
const META_PRESCAN_BYTES: usize = 1024;

/// Runs `f` on the fill unless it is (impossibly) borrowed already: never panics.
fn with<R: Default>(fill: &Shared, f: impl FnOnce(&mut Fill) -> R) -> R {
    match fill.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => R::default(),
    }
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
    fill: Shared,
}

impl std::fmt::Debug for PageRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRewriter").finish_non_exhaustive()
    }
}

impl PageRewriter {
    pub fn new(inputs: Inputs) -> Self {
        let fill: Shared = Rc::new(RefCell::new(Fill::new(inputs)));
        let out = Rc::new(RefCell::new(Vec::new()));
        let charset = fill.clone();
        let mut settings = Settings::new()
            .with_strict(false)
            .append_element_content_handler(element!("meta", move |el| {
                if el.source_location().bytes().end <= META_PRESCAN_BYTES && declares_utf8(el) {
                    with(&charset, Fill::declared_utf8);
                }
                Ok(())
            }));
        for (selector, hook) in SELECTORS {
            let Ok(selector) = selector.parse::<Selector>() else {
                continue; // the selectors are constants that parse (a test pins it)
            };
            let fill = fill.clone();
            settings = settings.append_element_content_handler((
                std::borrow::Cow::Owned(selector),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                    if with(&fill, |s| s.element(hook, el)) && el.can_have_content() {
                        let fill = fill.clone();
                        if let Some(handlers) = el.end_tag_handlers() {
                            handlers.push(Box::new(move |_| {
                                with(&fill, |s| s.end_tag(hook));
                                Ok(())
                            }));
                        }
                    }
                    Ok(())
                }),
            ));
        }
        let rewriter = HtmlRewriter::new(settings, Sink(out.clone()));
        PageRewriter {
            rewriter: Some(rewriter),
            out,
            fill,
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
        with(&self.fill, |s| s.failed(err));
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
        with(&self.fill, |s| s.report().clone())
    }

    pub fn page_item(&self) -> Option<String> {
        with(&self.fill, |s| s.page_item().map(str::to_owned))
    }
}

/// Rewrites a whole document at once.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selector_parses() {
        for (selector, hook) in SELECTORS {
            assert!(selector.parse::<Selector>().is_ok(), "{hook:?}: {selector}");
        }
    }
}
