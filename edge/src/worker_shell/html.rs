//! The slot fill on workerd's own `HTMLRewriter` (lol_html compiled into workerd). The page's
//! bytes stay in workerd: only the elements `rewrite::SELECTORS` match call into the wasm, where
//! `rewrite::Fill` decides what each slot gets (ranking, exclusions, escaping) and writes it
//! through the element's methods. Measured under workerd (`cargo xtask bench edge`), moving
//! every chunk into the wasm for the lol_html crate and back cost more CPU than the rewrite.
//!
//! The handlers are wasm-bindgen closures handed to JS (`into_js_value`): workerd calls them
//! while the body streams, after `fetch` has returned, and the generated glue frees each one
//! when the rewriter that holds it is garbage-collected, so a visitor who leaves mid-page leaks
//! nothing. The document's end sends the report (impressions, the debug view).

use std::cell::RefCell;
use std::rc::Rc;

use futures_channel::oneshot;
use wasm_bindgen::prelude::*;
use worker::js_sys::{Function, Object, Reflect};
use worker::web_sys;

use crate::rewrite::{Fill, Hook, Report, SELECTORS, SlotElement};

#[wasm_bindgen]
extern "C" {
    /// workerd's `HTMLRewriter`.
    #[wasm_bindgen(js_name = HTMLRewriter)]
    pub(super) type HtmlRewriter;

    #[wasm_bindgen(constructor, catch, js_class = "HTMLRewriter")]
    fn new() -> Result<HtmlRewriter, JsValue>;

    #[wasm_bindgen(method, catch, js_class = "HTMLRewriter")]
    fn on(this: &HtmlRewriter, selector: &str, handlers: &Object) -> Result<HtmlRewriter, JsValue>;

    #[wasm_bindgen(method, catch, js_class = "HTMLRewriter", js_name = onDocument)]
    fn on_document(this: &HtmlRewriter, handlers: &Object) -> Result<HtmlRewriter, JsValue>;

    /// The response whose body is `response`'s, rewritten as it is read.
    #[wasm_bindgen(method, catch, js_class = "HTMLRewriter")]
    pub(super) fn transform(
        this: &HtmlRewriter,
        response: &web_sys::Response,
    ) -> Result<web_sys::Response, JsValue>;

    /// An element a selector matched.
    type JsElement;

    #[wasm_bindgen(method, js_name = getAttribute)]
    fn get_attribute(this: &JsElement, name: &str) -> Option<String>;

    #[wasm_bindgen(method, catch, js_name = setAttribute)]
    fn set_attribute(this: &JsElement, name: &str, value: &str) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = removeAttribute)]
    fn remove_attribute(this: &JsElement, name: &str) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = setInnerContent)]
    fn set_inner_content(this: &JsElement, content: &str, options: &JsValue)
    -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch)]
    fn remove(this: &JsElement) -> Result<(), JsValue>;

    /// Not in every workerd: `None` where it is missing.
    #[wasm_bindgen(method, getter, js_name = canHaveContent)]
    fn can_have_content(this: &JsElement) -> Option<bool>;

    #[wasm_bindgen(method, getter, js_name = tagName)]
    fn tag_name(this: &JsElement) -> String;

    #[wasm_bindgen(method, catch, js_name = onEndTag)]
    fn on_end_tag(this: &JsElement, handler: &Function) -> Result<(), JsValue>;
}

/// An element as `Fill` sees it; `html` is the `{html: true}` option of `setInnerContent`.
struct El<'a> {
    el: &'a JsElement,
    html: &'a JsValue,
}

impl SlotElement for El<'_> {
    fn attr(&self, name: &str) -> Option<String> {
        self.el.get_attribute(name)
    }

    fn set_attr(&mut self, name: &str, value: &str) {
        let _ = self.el.set_attribute(name, value);
    }

    fn remove_attr(&mut self, name: &str) {
        let _ = self.el.remove_attribute(name);
    }

    fn set_inner_html(&mut self, html: &str) {
        let _ = self.el.set_inner_content(html, self.html);
    }

    fn remove(&mut self) {
        let _ = self.el.remove();
    }

    fn can_have_content(&self) -> bool {
        self.el
            .can_have_content()
            .unwrap_or_else(|| !is_void(&self.el.tag_name()))
    }
}

/// The HTML elements that have no end tag (lol_html's `can_have_content` is false for them).
fn is_void(tag: &str) -> bool {
    const VOID: [&str; 16] = [
        "area", "base", "basefont", "bgsound", "br", "col", "embed", "hr", "img", "input",
        "keygen", "link", "meta", "param", "source", "track",
    ];
    tag.eq_ignore_ascii_case("wbr") || VOID.iter().any(|v| tag.eq_ignore_ascii_case(v))
}

pub(super) type Shared = Rc<RefCell<Fill>>;

/// Runs `f` on the fill unless it is (impossibly) borrowed already: never panics.
pub(super) fn with<R: Default>(fill: &Shared, f: impl FnOnce(&mut Fill) -> R) -> R {
    match fill.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => R::default(),
    }
}

fn object(key: &str, value: &JsValue) -> Result<Object, JsValue> {
    let o = Object::new();
    Reflect::set(&o, &JsValue::from_str(key), value)?;
    Ok(o)
}

/// A rewriter whose handlers send the elements `selectors` match to `fill`.
fn handlers(fill: &Shared, selectors: &[(&str, Hook)]) -> Result<HtmlRewriter, JsValue> {
    let html: JsValue = object("html", &JsValue::TRUE)?.into();
    let mut rw = HtmlRewriter::new()?;
    for &(selector, hook) in selectors {
        let end: Option<Function> = match hook {
            Hook::Slot | Hook::Item => {
                let fill = fill.clone();
                let end = Closure::<dyn FnMut(JsValue)>::new(move |_| {
                    with(&fill, |s| s.end_tag(hook));
                });
                Some(end.into_js_value().unchecked_into())
            }
            _ => None,
        };
        let fill = fill.clone();
        let html = html.clone();
        let element = Closure::<dyn FnMut(JsElement)>::new(move |el: JsElement| {
            let wants_end = with(&fill, |s| {
                s.element(
                    hook,
                    &mut El {
                        el: &el,
                        html: &html,
                    },
                )
            });
            if wants_end
                && let Some(end) = &end
                && el.on_end_tag(end).is_err()
            {
                // No end tag will come (a self-closing element in SVG, say): the element ends here.
                with(&fill, |s| s.end_tag(hook));
            }
        });
        rw = rw.on(selector, &object("element", &element.into_js_value())?)?;
    }
    Ok(rw)
}

/// The page's rewriter: fills its slots through `fill`; `report` gets the report when the
/// document ends.
pub(super) fn rewriter(
    fill: &Shared,
    report: oneshot::Sender<Report>,
) -> Result<HtmlRewriter, JsValue> {
    let rw = handlers(fill, &SELECTORS)?;
    let fill = fill.clone();
    let mut report = Some(report);
    let end = Closure::<dyn FnMut(JsValue)>::new(move |_| {
        if let Some(tx) = report.take() {
            let _ = tx.send(with(&fill, |s| s.report().clone()));
        }
    });
    rw.on_document(&object("end", &end.into_js_value())?)
}
