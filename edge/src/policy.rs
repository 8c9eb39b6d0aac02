//! Bypass decisions: when the edge must leave a request or response alone.

/// Why a response passes through untouched (`x-attune: bypass;reason=<code>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    Method,
    Range,
    NoTransform,
    NotHtml,
    Status,
    Bot,
    Consent,
    Internal,
    /// The upstream could not be reached: the `502` is the upstream's, not Attune's.
    Upstream,
}

impl Bypass {
    pub fn code(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Range => "range",
            Bypass::NoTransform => "no-transform",
            Bypass::NotHtml => "not-html",
            Bypass::Status => "status",
            Bypass::Bot => "bot",
            Bypass::Consent => "consent",
            Bypass::Internal => "internal",
            Bypass::Upstream => "upstream",
        }
    }
}

/// What the request says, as plain strings (so the logic is testable without `worker`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub range: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub sec_gpc: Option<&'a str>,
    /// Value of the `attune_consent` cookie.
    pub consent_cookie: Option<&'a str>,
}

/// Decided before the upstream answers. Order matters: bots get no cookies, consent-off
/// visitors no lookups.
pub fn request_bypass(r: &RequestFacts<'_>) -> Option<Bypass> {
    if !r.method.eq_ignore_ascii_case("GET") {
        return Some(Bypass::Method);
    }
    if r.range.is_some() {
        return Some(Bypass::Range);
    }
    if r.cache_control.is_some_and(has_no_transform) {
        return Some(Bypass::NoTransform);
    }
    if r.user_agent.is_some_and(is_bot) {
        return Some(Bypass::Bot);
    }
    if consent_denied(r.sec_gpc, r.consent_cookie) {
        return Some(Bypass::Consent);
    }
    None
}

/// Decided when the upstream's headers arrive.
pub fn response_bypass(
    status: u16,
    content_type: Option<&str>,
    cache_control: Option<&str>,
    content_encoding: Option<&str>,
) -> Option<Bypass> {
    if status != 200 {
        return Some(Bypass::Status);
    }
    let html = content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("text/html")
            && ct.split(';').skip(1).all(|p| {
                let p = p.trim();
                !p.to_ascii_lowercase().starts_with("charset=")
                    || p[8..].trim_matches('"').eq_ignore_ascii_case("utf-8")
                    || p[8..].trim_matches('"').eq_ignore_ascii_case("utf8")
            })
    });
    // The runtime decodes gzip, deflate and br bodies for us; anything else stays opaque.
    let encoded = content_encoding.is_some_and(|e| {
        let e = e.trim().to_ascii_lowercase();
        !matches!(e.as_str(), "" | "identity" | "gzip" | "deflate" | "br")
    });
    if !html || encoded {
        return Some(Bypass::NotHtml);
    }
    if cache_control.is_some_and(has_no_transform) {
        return Some(Bypass::NoTransform);
    }
    None
}

fn has_no_transform(cc: &str) -> bool {
    cc.split(',')
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

/// `Sec-GPC: 1` or `attune_consent=no` (also `0`, `false`, `deny`).
pub fn consent_denied(sec_gpc: Option<&str>, consent_cookie: Option<&str>) -> bool {
    sec_gpc.is_some_and(|v| v.trim() == "1")
        || consent_cookie.is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "no" | "0" | "false" | "deny" | "denied"
            )
        })
}

/// Known bots and crawlers, by user agent substring (lowercase).
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawler",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "bingpreview",
    "mediapartners-google",
    "lighthouse",
    "pingdom",
    "uptime",
    "python-requests",
    "wget",
    "curl/",
    "httpclient",
    "scrapy",
];

pub fn is_bot(user_agent: &str) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    BOT_MARKERS.iter().any(|m| ua.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str) -> RequestFacts<'_> {
        RequestFacts {
            method,
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
            ..Default::default()
        }
    }

    #[test]
    fn requests() {
        assert_eq!(request_bypass(&req("GET")), None);
        assert_eq!(request_bypass(&req("HEAD")), Some(Bypass::Method));
        assert_eq!(request_bypass(&req("POST")), Some(Bypass::Method));
        let r = RequestFacts {
            range: Some("bytes=0-10"),
            ..req("GET")
        };
        assert_eq!(request_bypass(&r), Some(Bypass::Range));
        let r = RequestFacts {
            user_agent: Some("Mozilla/5.0 (compatible; Googlebot/2.1)"),
            ..req("GET")
        };
        assert_eq!(request_bypass(&r), Some(Bypass::Bot));
        let r = RequestFacts {
            sec_gpc: Some("1"),
            ..req("GET")
        };
        assert_eq!(request_bypass(&r), Some(Bypass::Consent));
        let r = RequestFacts {
            consent_cookie: Some("no"),
            ..req("GET")
        };
        assert_eq!(request_bypass(&r), Some(Bypass::Consent));
        let r = RequestFacts {
            consent_cookie: Some("yes"),
            sec_gpc: Some("0"),
            ..req("GET")
        };
        assert_eq!(request_bypass(&r), None);
        assert!(!is_bot("Mozilla/5.0 HeadlessChrome/130.0"));
    }

    #[test]
    fn responses() {
        let html = Some("text/html; charset=utf-8");
        assert_eq!(response_bypass(200, html, None, None), None);
        assert_eq!(response_bypass(200, Some("TEXT/HTML"), None, None), None);
        assert_eq!(response_bypass(404, html, None, None), Some(Bypass::Status));
        assert_eq!(
            response_bypass(200, Some("image/svg+xml"), None, None),
            Some(Bypass::NotHtml)
        );
        assert_eq!(
            response_bypass(200, None, None, None),
            Some(Bypass::NotHtml)
        );
        assert_eq!(
            response_bypass(200, Some("text/html; charset=iso-8859-1"), None, None),
            Some(Bypass::NotHtml)
        );
        assert_eq!(
            response_bypass(200, html, Some("public, No-Transform"), None),
            Some(Bypass::NoTransform)
        );
        assert_eq!(
            response_bypass(200, html, None, Some("x-custom")),
            Some(Bypass::NotHtml)
        );
        assert_eq!(response_bypass(200, html, None, Some("gzip")), None);
        assert_eq!(
            response_bypass(200, html, None, Some("x-custom")),
            Some(Bypass::NotHtml)
        );
    }
}
