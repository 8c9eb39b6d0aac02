//! The shared HTML cache's rules (RFC 9111, as a shared cache): what the request that goes
//! upstream carries, whether a request may be answered from the cache, and whether (and how
//! long) an upstream page is stored. The cache key is the upstream URL alone, so anything that
//! makes a page depend on who asked means no shared copy.

use crate::cookies;

/// Request headers that never go upstream: `host` is the upstream's own, `x-attune-debug`
/// carries Attune's debug token, and `cookie` is replaced by the site's own cookies
/// ([`cookies::site_cookies`]).
pub const UPSTREAM_REQUEST_DROP: &[&str] = &["host", "cookie", "x-attune-debug"];

/// What the request says, for the cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheRequest<'a> {
    pub method: &'a str,
    pub range: bool,
    /// An `Authorization` header was sent.
    pub authorization: bool,
    /// The `Cookie` header, Attune's cookies included.
    pub cookie: Option<&'a str>,
    /// The request's own `Cache-Control`.
    pub cache_control: Option<&'a str>,
}

impl CacheRequest<'_> {
    /// Credentials the upstream may answer with a page of its own for this visitor.
    pub fn has_credentials(&self) -> bool {
        self.authorization || cookies::site_cookies(self.cookie).is_some()
    }

    fn plain_get(&self) -> bool {
        self.method.eq_ignore_ascii_case("GET") && !self.range
    }

    /// Whether the request may be answered from the shared cache. A visitor with credentials
    /// always gets the upstream's answer: a stored copy is some other visitor's or nobody's
    /// page, never this one's.
    pub fn may_read(&self) -> bool {
        let cc = Directives::parse(self.cache_control);
        self.plain_get()
            && !self.has_credentials()
            && !cc.no_cache
            && !cc.no_store
            && cc.max_age != Some(0)
    }
}

/// What the upstream's response says, for the cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheResponse<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    /// Every `Vary` header, joined with `,`.
    pub vary: Option<&'a str>,
    pub expires: bool,
    pub set_cookie: bool,
    /// `x-attune-user`: the page names its logged-in user.
    pub attune_user: bool,
}

/// Whether and how an upstream page is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// Not stored, and why.
    No(NoStore),
    /// Stored as it is: its own headers give its freshness.
    AsIs,
    /// Stored with this `Cache-Control` (the operator's default TTL on a page that allows a
    /// shared copy but said nothing of its freshness).
    WithCacheControl(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoStore {
    /// Not a plain GET, or the request said `no-store`.
    Request,
    Status,
    NotHtml,
    SetCookie,
    AttuneUser,
    /// `no-store`.
    NoStoreDirective,
    /// `private`.
    Private,
    /// `no-cache`: every use would need revalidation, which this cache does not do.
    NoCache,
    /// `Vary` on something other than `Accept-Encoding` (the key does not include it), or `*`.
    Vary,
    /// The request carried `Authorization` or site cookies, and the page does not say
    /// `public` or `s-maxage`.
    Credentials,
    /// A freshness lifetime of zero.
    Stale,
    /// No freshness information and no default TTL configured.
    NoFreshness,
}

/// The parts of a `Cache-Control` header the decision reads.
#[derive(Clone, Copy, Debug, Default)]
struct Directives {
    public: bool,
    private: bool,
    no_store: bool,
    no_cache: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl Directives {
    fn parse(header: Option<&str>) -> Self {
        let mut d = Directives::default();
        for directive in header.unwrap_or("").split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            // A seconds value that does not parse counts as zero: stale, the safe reading.
            let seconds = || Some(value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
            match name.to_ascii_lowercase().as_str() {
                "public" => d.public = true,
                // `private="field"` and `no-cache="field"` restrict parts of a response; a
                // cache that does not strip fields treats them as the whole.
                "private" => d.private = true,
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = seconds(),
                "s-maxage" => d.s_maxage = seconds(),
                _ => {}
            }
        }
        d
    }
}

/// Whether the upstream's page may be stored in the shared cache, for this request.
/// `default_ttl_s` (`ATTUNE_HTML_TTL`) applies only to a page without freshness information
/// that nothing forbids sharing.
pub fn store(
    req: &CacheRequest<'_>,
    resp: &CacheResponse<'_>,
    default_ttl_s: Option<u64>,
) -> Store {
    let req_cc = Directives::parse(req.cache_control);
    if !req.plain_get() || req_cc.no_store {
        return Store::No(NoStore::Request);
    }
    if resp.status != 200 {
        return Store::No(NoStore::Status);
    }
    let html = resp.content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
    });
    if !html {
        return Store::No(NoStore::NotHtml);
    }
    if resp.set_cookie {
        return Store::No(NoStore::SetCookie);
    }
    if resp.attune_user {
        return Store::No(NoStore::AttuneUser);
    }
    let cc = Directives::parse(resp.cache_control);
    if cc.no_store {
        return Store::No(NoStore::NoStoreDirective);
    }
    if cc.private {
        return Store::No(NoStore::Private);
    }
    if cc.no_cache {
        return Store::No(NoStore::NoCache);
    }
    let varies = resp
        .vary
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .any(|v| !v.eq_ignore_ascii_case("accept-encoding"));
    if varies {
        return Store::No(NoStore::Vary);
    }
    let shared_explicitly = cc.public || cc.s_maxage.is_some();
    if req.has_credentials() && !shared_explicitly {
        return Store::No(NoStore::Credentials);
    }
    match cc.s_maxage.or(cc.max_age) {
        Some(0) => Store::No(NoStore::Stale),
        Some(_) => Store::AsIs,
        None if resp.expires => Store::AsIs,
        None => match default_ttl_s {
            Some(ttl) if ttl > 0 => {
                let cache_control = match resp.cache_control.map(str::trim) {
                    Some(cc) if !cc.is_empty() => format!("{cc}, max-age={ttl}"),
                    _ => format!("public, max-age={ttl}"),
                };
                Store::WithCacheControl(cache_control)
            }
            _ => Store::No(NoStore::NoFreshness),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED_IN: &str = "sessionid=alice; attune_vid=0123456789abcdef0123456789abcdef";

    fn get(cookie: Option<&str>) -> CacheRequest<'_> {
        CacheRequest {
            method: "GET",
            cookie,
            ..CacheRequest::default()
        }
    }

    fn page(cache_control: Option<&str>) -> CacheResponse<'_> {
        CacheResponse {
            status: 200,
            content_type: Some("text/html; charset=utf-8"),
            cache_control,
            ..CacheResponse::default()
        }
    }

    /// The four leaks of issue 17, each with a signed-in visitor's request: never stored,
    /// whatever the operator's default TTL.
    #[test]
    fn a_signed_in_page_is_never_shared() {
        let basic = CacheRequest {
            authorization: true,
            ..get(None)
        };
        let cookie = get(Some(SIGNED_IN));
        for ttl in [None, Some(60)] {
            // No cache headers (Django's and Express's default).
            assert_eq!(
                store(&cookie, &page(None), ttl),
                Store::No(NoStore::Credentials)
            );
            // `Cache-Control: no-cache`.
            assert_eq!(
                store(&cookie, &page(Some("no-cache")), ttl),
                Store::No(NoStore::NoCache)
            );
            // `Vary: Cookie`, even with a freshness lifetime.
            let vary = CacheResponse {
                vary: Some("Cookie"),
                ..page(Some("max-age=60"))
            };
            assert_eq!(store(&cookie, &vary, ttl), Store::No(NoStore::Vary));
            // HTTP Basic auth.
            assert_eq!(
                store(&basic, &page(None), ttl),
                Store::No(NoStore::Credentials)
            );
            assert_eq!(
                store(&basic, &page(Some("max-age=60")), ttl),
                Store::No(NoStore::Credentials)
            );
        }
        // And a visitor with credentials is never served from the cache.
        assert!(!cookie.may_read());
        assert!(!basic.may_read());
    }

    #[test]
    fn attunes_own_cookies_are_not_credentials() {
        let visitor = get(Some(
            "attune_vid=0123456789abcdef0123456789abcdef; attune_s=1.x.y; attune_consent=yes",
        ));
        assert!(!visitor.has_credentials());
        assert!(visitor.may_read());
        assert_eq!(
            store(&visitor, &page(Some("max-age=60")), None),
            Store::AsIs
        );
        assert!(get(Some("attune_vid=x; cart=3")).has_credentials());
    }

    #[test]
    fn credentials_are_shared_only_when_the_upstream_says_so() {
        let cookie = get(Some(SIGNED_IN));
        assert_eq!(
            store(&cookie, &page(Some("public, max-age=60")), None),
            Store::AsIs
        );
        assert_eq!(
            store(&cookie, &page(Some("s-maxage=60")), None),
            Store::AsIs
        );
        assert_eq!(
            store(&cookie, &page(Some("max-age=60")), Some(60)),
            Store::No(NoStore::Credentials)
        );
        assert_eq!(
            store(&cookie, &page(Some("public")), Some(30)),
            Store::WithCacheControl("public, max-age=30".into())
        );
        assert_eq!(
            store(&cookie, &page(Some("public")), None),
            Store::No(NoStore::NoFreshness)
        );
        // `public` does not override `private`, `no-store` or `no-cache`.
        for (cc, why) in [
            ("public, private", NoStore::Private),
            ("public, no-store", NoStore::NoStoreDirective),
            ("public, s-maxage=60, no-cache", NoStore::NoCache),
        ] {
            assert_eq!(
                store(&cookie, &page(Some(cc)), Some(60)),
                Store::No(why),
                "{cc}"
            );
        }
    }

    #[test]
    fn directives_that_forbid_a_shared_copy() {
        let anon = get(None);
        for (cc, why) in [
            ("private", NoStore::Private),
            ("Private, max-age=600", NoStore::Private),
            ("private=\"set-cookie\", max-age=60", NoStore::Private),
            ("no-store", NoStore::NoStoreDirective),
            ("max-age=60, NO-STORE", NoStore::NoStoreDirective),
            ("no-cache", NoStore::NoCache),
            ("no-cache=\"x-user\", max-age=60", NoStore::NoCache),
            ("max-age=0", NoStore::Stale),
            ("s-maxage=0, max-age=60", NoStore::Stale),
            ("max-age=soon", NoStore::Stale),
        ] {
            assert_eq!(
                store(&anon, &page(Some(cc)), Some(60)),
                Store::No(why),
                "{cc}"
            );
        }
    }

    #[test]
    fn vary() {
        let anon = get(None);
        let with = |vary| CacheResponse {
            vary: Some(vary),
            ..page(Some("max-age=60"))
        };
        assert_eq!(store(&anon, &with("Accept-Encoding"), None), Store::AsIs);
        assert_eq!(store(&anon, &with("accept-encoding, "), None), Store::AsIs);
        for vary in [
            "*",
            "Cookie",
            "Accept-Encoding, Cookie",
            "Authorization",
            "User-Agent",
            "accept-language",
        ] {
            assert_eq!(
                store(&anon, &with(vary), None),
                Store::No(NoStore::Vary),
                "{vary}"
            );
        }
    }

    #[test]
    fn the_default_ttl_is_off_unless_configured() {
        let anon = get(None);
        assert_eq!(
            store(&anon, &page(None), None),
            Store::No(NoStore::NoFreshness)
        );
        assert_eq!(
            store(&anon, &page(None), Some(0)),
            Store::No(NoStore::NoFreshness)
        );
        assert_eq!(
            store(&anon, &page(None), Some(120)),
            Store::WithCacheControl("public, max-age=120".into())
        );
        assert_eq!(
            store(&anon, &page(Some("must-revalidate")), Some(120)),
            Store::WithCacheControl("must-revalidate, max-age=120".into())
        );
        // Freshness of the upstream's own wins over the default.
        assert_eq!(
            store(&anon, &page(Some("max-age=5")), Some(120)),
            Store::AsIs
        );
        let expires = CacheResponse {
            expires: true,
            ..page(None)
        };
        assert_eq!(store(&anon, &expires, Some(120)), Store::AsIs);
    }

    #[test]
    fn only_plain_html_pages() {
        let anon = get(None);
        let ok = page(Some("max-age=60"));
        assert_eq!(store(&anon, &ok, None), Store::AsIs);
        let cases = [
            (CacheResponse { status: 404, ..ok }, NoStore::Status),
            (
                CacheResponse {
                    content_type: Some("application/json"),
                    ..ok
                },
                NoStore::NotHtml,
            ),
            (
                CacheResponse {
                    content_type: None,
                    ..ok
                },
                NoStore::NotHtml,
            ),
            (
                CacheResponse {
                    set_cookie: true,
                    ..ok
                },
                NoStore::SetCookie,
            ),
            (
                CacheResponse {
                    attune_user: true,
                    ..ok
                },
                NoStore::AttuneUser,
            ),
        ];
        for (resp, why) in cases {
            assert_eq!(store(&anon, &resp, Some(60)), Store::No(why), "{resp:?}");
        }
        for req in [
            CacheRequest {
                method: "POST",
                ..anon
            },
            CacheRequest {
                method: "HEAD",
                ..anon
            },
            CacheRequest {
                range: true,
                ..anon
            },
            CacheRequest {
                cache_control: Some("no-store"),
                ..anon
            },
        ] {
            assert_eq!(
                store(&req, &ok, Some(60)),
                Store::No(NoStore::Request),
                "{req:?}"
            );
        }
    }

    #[test]
    fn reads_from_the_cache() {
        assert!(get(None).may_read());
        for req in [
            CacheRequest {
                method: "POST",
                ..get(None)
            },
            CacheRequest {
                range: true,
                ..get(None)
            },
            CacheRequest {
                authorization: true,
                ..get(None)
            },
            CacheRequest {
                cache_control: Some("no-cache"),
                ..get(None)
            },
            CacheRequest {
                cache_control: Some("max-age=0"),
                ..get(None)
            },
            get(Some("sessionid=bob")),
        ] {
            assert!(!req.may_read(), "{req:?}");
        }
    }
}
