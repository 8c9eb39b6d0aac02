//! Response headers the edge adds (`x-attune`, `Server-Timing`), the debug explanation and
//! the beacon script.

use serde::Serialize;

use crate::identity::Kind;
use crate::policy::Bypass;
use crate::rewrite::Report;

/// What happened to a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Personalized,
    Default(&'static str),
    Bypass(Bypass),
}

impl Outcome {
    pub fn header(self) -> String {
        match self {
            Outcome::Personalized => "personalized".into(),
            Outcome::Default(reason) => format!("default;reason={reason}"),
            Outcome::Bypass(b) => format!("bypass;reason={}", b.code()),
        }
    }
}

/// The edge's own costs in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// From the request's arrival to the response headers.
    pub total: f64,
    /// Waiting for KV after the upstream answered (what the budget bounds).
    pub kv_wait: Option<f64>,
    pub upstream: Option<f64>,
}

impl Timing {
    pub fn header(&self) -> String {
        let mut out = format!("attune;dur={}", self.total.max(0.0));
        if let Some(kv) = self.kv_wait {
            out.push_str(&format!(", attune-kv;dur={}", kv.max(0.0)));
        }
        if let Some(up) = self.upstream {
            out.push_str(&format!(", attune-upstream;dur={}", up.max(0.0)));
        }
        out
    }
}

/// The debug explanation (`x-attune-debug` header and `/__attune/debug`).
#[derive(Debug, Serialize)]
pub struct Debug<'a> {
    pub outcome: String,
    pub identity: Option<Kind>,
    /// The profile's version, or why there is none.
    pub profile: ProfileState,
    pub session_items: Vec<&'a str>,
    pub segments: Vec<&'a str>,
    #[serde(flatten)]
    pub report: &'a Report,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileState {
    Version(u64),
    Missing,
    Skipped,
    Failed(&'static str),
}

impl Debug<'_> {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// JSON made fit for a header value: every character outside visible ASCII (and space) as a
/// JSON `\uXXXX` escape, so the value is still the same JSON, and runtimes that refuse or warn
/// about non-Latin-1 header bytes never see any. `json` must be JSON (escapes appear only
/// inside its strings, where JSON allows them).
pub fn header_json(json: &str) -> String {
    use std::fmt::Write;
    if json.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

/// `/__attune/beacon.js`: a `view` of the page's item on load, `add_to_cart` on
/// `[data-attune-add-to-cart]` clicks, `click` on links inside `[data-attune-item]`.
pub const BEACON_JS: &str = r#"(()=>{const u="/__attune/events",s=(k,i,p)=>{if(!i)return;const e={kind:k,item:i,ts:Date.now()};if(p)e.props=p;try{navigator.sendBeacon(u,new Blob([JSON.stringify([e])],{type:"application/json"}))}catch(_){}},m=document.querySelector('meta[name="attune:item"]'),v=()=>s("view",m&&m.content);document.readyState==="loading"?addEventListener("DOMContentLoaded",v):v();addEventListener("click",e=>{const t=e.target;if(!t||!t.closest)return;const a=t.closest("[data-attune-add-to-cart]");if(a){s("add_to_cart",a.getAttribute("data-attune-add-to-cart")||(m&&m.content));return}const l=t.closest("a"),it=l&&l.closest("[data-attune-item]");if(it){const sl=it.closest("[data-attune-slot]");s("click",it.getAttribute("data-attune-item"),sl?{slot:sl.getAttribute("data-attune-slot")}:null)}},true)})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(Outcome::Personalized.header(), "personalized");
        assert_eq!(
            Outcome::Default("kv-timeout").header(),
            "default;reason=kv-timeout"
        );
        assert_eq!(Outcome::Bypass(Bypass::Bot).header(), "bypass;reason=bot");
        let t = Timing {
            total: 1.5,
            kv_wait: Some(0.0),
            upstream: None,
        };
        assert_eq!(t.header(), "attune;dur=1.5, attune-kv;dur=0");
    }

    #[test]
    fn header_json_is_visible_ascii_and_the_same_json() {
        let value = serde_json::json!({
            "slot": "r\u{e9}cos \u{2713} \u{1F375} \u{5e7}",
            "tab": "a\tb\u{7f}",
        });
        let json = serde_json::to_string(&value).unwrap();
        let header = header_json(&json);
        assert!(
            header.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{header}"
        );
        assert!(header.contains("\\ud83c\\udf75"), "{header}");
        let back: serde_json::Value = serde_json::from_str(&header).unwrap();
        assert_eq!(back, value);
        assert_eq!(header_json(r#"{"a":"b c"}"#), r#"{"a":"b c"}"#);
    }

    #[test]
    fn beacon_is_small() {
        assert!(BEACON_JS.len() < 2048, "{}", BEACON_JS.len());
        assert!(BEACON_JS.contains("sendBeacon"));
    }
}
