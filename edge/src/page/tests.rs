//! The page's decisions, driven as the Worker shell drives them, without a runtime.

use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::{Profile, ProfileConfig};

use super::*;
use crate::policy::Bypass;
use crate::rewrite::rewrite_all;
use crate::tests::model;

const NOW: Millis = 1_733_040_000_000;
const VID: &str = "0123456789abcdef0123456789abcdef";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0";
const PAGE: &[u8] = br#"<html><head><meta name="attune:item" content="A1"></head><body><div data-attune-slot="hero"><p data-attune-variant="default">D</p><p data-attune-variant="returning-buyer" hidden>R</p></div></body></html>"#;

fn settings() -> Settings {
    Settings::from_lookup(|name| {
        Some(
            match name {
                "ATTUNE_SESSION_KEY" => "session-key",
                "ATTUNE_PROFILE_KEY" => "profile-key",
                "ATTUNE_DEBUG_TOKEN" => "debug-token",
                "ATTUNE_BUDGET_MS" => "50",
                _ => return None,
            }
            .to_owned(),
        )
    })
}

fn request(cookie: Option<&str>) -> PageRequest<'_> {
    PageRequest {
        method: "GET",
        user_agent: Some(BROWSER),
        cookie,
        ..PageRequest::default()
    }
}

fn html() -> UpstreamHead<'static> {
    UpstreamHead {
        status: 200,
        content_type: Some("text/html; charset=utf-8"),
        ..UpstreamHead::default()
    }
}

fn fresh_id() -> String {
    VID.to_owned()
}

fn loaded(profile: ProfileRead) -> Loaded {
    Loaded {
        model: Ok(model(vec![
            crate::data::tests::item("A1", "Alpha", "Mugs"),
            crate::data::tests::item("B2", "Beta", "Bags"),
        ])),
        profile,
    }
}

fn buyer() -> Profile {
    let mut p = Profile::default();
    p.apply(
        &Event {
            v: SCHEMA_VERSION,
            event_id: "e1".into(),
            user: "u1".into(),
            ts: NOW - 60_000,
            kind: EventKind::Purchase,
            item: Some("B2".into()),
            props: Default::default(),
        },
        Some("Bags"),
        &ProfileConfig::default(),
    );
    p
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs a page through to its headers: `(headers, rewritten page)`.
fn serve(
    page: &mut Page<'_>,
    head: UpstreamHead<'_>,
    data: Option<Loaded>,
    relogin: Option<Option<ProfileRead>>,
) -> (Vec<(&'static str, String)>, String) {
    assert_eq!(page.on_upstream(&head, NOW + 5), None);
    let reread = page.on_loaded(data, true);
    assert_eq!(reread, relogin.is_some(), "re-read of the profile");
    if let Some(read) = relogin {
        page.on_profile(read);
    }
    let inputs = page.rewrite(NOW + 10);
    let (out, report) = rewrite_all(inputs, PAGE, 1 << 20);
    let headers = page.response_headers(report.page_item.as_deref(), &report, NOW + 12);
    (headers, String::from_utf8(out).unwrap())
}

#[test]
fn settings_from_a_lookup() {
    let s = Settings::from_lookup(|_| None);
    assert_eq!(s.budget_ms, DEFAULT_BUDGET_MS);
    assert_eq!(s.html_ttl_s, None, "no default TTL");
    assert!(!s.demo_login && s.upstream.is_empty() && s.debug_token.is_empty());
    let s = Settings::from_lookup(|name| {
        Some(
            match name {
                "ATTUNE_UPSTREAM" => " https://shop.example/ ",
                "ATTUNE_BUDGET_MS" => " 120 ",
                "ATTUNE_HTML_TTL" => "300",
                "ATTUNE_DEMO_LOGIN" => "1",
                "ATTUNE_ORIGIN_INGEST_URL" => "http://127.0.0.1:7878/v1/events",
                "ATTUNE_INGEST_TOKEN" => "it",
                "ATTUNE_SESSION_KEY" => "sk",
                "ATTUNE_PROFILE_KEY" => "pk",
                "ATTUNE_DEBUG_TOKEN" => "dt",
                "ATTUNE_DEV_KV_TOKEN" => "kt",
                _ => return None,
            }
            .to_owned(),
        )
    });
    assert_eq!(
        s,
        Settings {
            upstream: "https://shop.example".into(),
            ingest_url: "http://127.0.0.1:7878/v1/events".into(),
            ingest_token: "it".into(),
            budget_ms: 120,
            demo_login: true,
            session_key: "sk".into(),
            profile_key: "pk".into(),
            debug_token: "dt".into(),
            dev_kv_token: "kt".into(),
            html_ttl_s: Some(300),
        }
    );
    for (budget, ttl) in [("-5", "0"), ("fifty", "soon"), ("", "")] {
        let s = Settings::from_lookup(|name| match name {
            "ATTUNE_BUDGET_MS" => Some(budget.to_owned()),
            "ATTUNE_HTML_TTL" => Some(ttl.to_owned()),
            "ATTUNE_DEMO_LOGIN" => Some("yes".to_owned()),
            _ => None,
        });
        assert_eq!(s.budget_ms, DEFAULT_BUDGET_MS, "{budget:?}");
        assert_eq!(s.html_ttl_s, None, "{ttl:?}");
        assert!(!s.demo_login);
    }
}

#[test]
fn the_debug_token_is_checked() {
    let s = settings();
    assert!(s.debug_allowed(Some("debug-token")));
    assert!(!s.debug_allowed(Some("debug-tokeN")));
    assert!(!s.debug_allowed(None));
    let off = Settings::default();
    assert!(!off.debug_allowed(Some("")));
}

#[test]
fn bots_and_opted_out_visitors_are_left_alone_before_any_cookie() {
    let s = settings();
    let bot = PageRequest {
        user_agent: Some("Googlebot/2.1"),
        ..request(None)
    };
    let called = std::cell::Cell::new(false);
    let r = Page::start(&bot, &s, NOW, || {
        called.set(true);
        fresh_id()
    });
    assert_eq!(r.err(), Some(Outcome::Bypass(Bypass::Bot)));
    assert!(!called.get(), "no visitor id minted for a bot");
    let gpc = PageRequest {
        sec_gpc: Some("1"),
        ..request(None)
    };
    assert_eq!(
        Page::start(&gpc, &s, NOW, fresh_id).err(),
        Some(Outcome::Bypass(Bypass::Consent))
    );
    let head = PageRequest {
        method: "HEAD",
        ..request(None)
    };
    assert_eq!(
        Page::start(&head, &s, NOW, fresh_id).err(),
        Some(Outcome::Bypass(Bypass::Method))
    );
}

#[test]
fn a_new_visitor_gets_an_id_a_session_and_personalized_content() {
    let s = settings();
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    assert_eq!(page.identity().id, VID);
    assert_eq!(
        page.profile_key(),
        Some(attune_core::hash::profile_key(b"profile-key", VID))
    );
    let (headers, _) = serve(&mut page, html(), Some(loaded(ProfileRead::Missing)), None);
    assert_eq!(header(&headers, "x-attune"), Some("personalized"));
    assert_eq!(header(&headers, "cache-control"), Some("private, no-cache"));
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| *k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies[0].starts_with(&format!("attune_vid={VID};")));
    // The page's item joined the session cookie sent with these headers.
    let value = cookies[1]
        .strip_prefix("attune_s=")
        .and_then(|c| c.split(';').next())
        .unwrap();
    let session = session::decode_cookie(Some(value), b"session-key", NOW + 20, DEFAULT_GAP_MS);
    assert_eq!(session.recent_items().collect::<Vec<_>>(), ["A1"]);
    let timing = header(&headers, "server-timing").unwrap();
    assert!(
        timing.contains("attune;dur=12")
            && timing.contains("attune-kv;dur=5")
            && timing.contains("attune-upstream;dur=5"),
        "{timing}"
    );
    assert_eq!(
        header(&headers, "x-attune-debug"),
        None,
        "no token, no debug"
    );
    assert!(!page.forwards_impressions(), "no ingest URL configured");
    let forwarding = Settings {
        ingest_url: "http://127.0.0.1:7878/v1/events".into(),
        ..settings()
    };
    let mut page = Page::start(&request(None), &forwarding, NOW, fresh_id).unwrap();
    serve(&mut page, html(), Some(loaded(ProfileRead::Missing)), None);
    assert!(page.forwards_impressions());
}

#[test]
fn a_known_visitor_keeps_its_id_and_sets_no_visitor_cookie() {
    let s = settings();
    let cookie = format!("attune_vid={VID}; site=1");
    let mut page = Page::start(&request(Some(&cookie)), &s, NOW, || {
        panic!("the visitor has an id")
    })
    .unwrap();
    let (headers, _) = serve(&mut page, html(), Some(loaded(ProfileRead::Missing)), None);
    assert!(
        !headers
            .iter()
            .any(|(k, v)| *k == "set-cookie" && v.starts_with("attune_vid="))
    );
}

#[test]
fn out_of_budget_means_default_content() {
    let s = settings();
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    assert_eq!(page.wait_ms(NOW + 20), 30);
    assert_eq!(page.wait_ms(NOW + 80), 0);
    let (headers, out) = serve(&mut page, html(), None, None);
    assert_eq!(
        header(&headers, "x-attune"),
        Some("default;reason=kv-timeout")
    );
    assert!(out.contains(">D</p>") && !out.contains(">R</p>"));
    assert!(!page.forwards_impressions());
    // Without a KV binding there was nothing to wait for.
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    assert_eq!(page.on_upstream(&html(), NOW), None);
    assert!(!page.on_loaded(None, false));
    page.rewrite(NOW);
    assert_eq!(page.outcome(), Outcome::Default("kv-error"));
}

#[test]
fn an_unreadable_profile_means_default_content() {
    let s = settings();
    for (f, code) in [
        (Fallback::BadSnapshot, "default;reason=bad-snapshot"),
        (Fallback::UnknownSchema, "default;reason=unknown-schema"),
    ] {
        let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
        let (headers, _) = serve(
            &mut page,
            html(),
            Some(loaded(ProfileRead::Failed(f))),
            None,
        );
        assert_eq!(header(&headers, "x-attune"), Some(code));
    }
}

#[test]
fn a_buyer_is_in_the_buyer_segment_and_sees_the_buyer_variant() {
    let s = settings();
    let cookie = format!("attune_vid={VID}");
    let mut page = Page::start(
        &PageRequest {
            debug_token: Some("debug-token"),
            ..request(Some(&cookie))
        },
        &s,
        NOW,
        fresh_id,
    )
    .unwrap();
    let read = ProfileRead::Found(Box::new(buyer()), 7);
    let (headers, out) = serve(&mut page, html(), Some(loaded(read)), None);
    assert!(out.contains(">R</p>") && !out.contains(">D</p>"), "{out}");
    let debug: serde_json::Value =
        serde_json::from_str(header(&headers, "x-attune-debug").unwrap()).unwrap();
    assert_eq!(debug["segments"], serde_json::json!(["buyer"]));
    assert_eq!(debug["profile"]["version"], 7);
    assert_eq!(debug["identity"], "visitor");
    assert_eq!(debug["outcome"], "personalized");
}

#[test]
fn the_upstream_names_the_logged_in_user() {
    let s = settings();
    let named = UpstreamHead {
        user: Some("u-17850"),
        ..html()
    };
    // The visitor's profile was read; the user's is read again and wins.
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    let read = ProfileRead::Found(Box::new(buyer()), 3);
    let (headers, out) = serve(
        &mut page,
        named,
        Some(loaded(ProfileRead::Missing)),
        Some(Some(read)),
    );
    assert_eq!(page.identity().kind, identity::Kind::User);
    assert_eq!(
        page.profile_key(),
        Some(attune_core::hash::profile_key(b"profile-key", "u-17850"))
    );
    assert_eq!(header(&headers, "x-attune"), Some("personalized"));
    assert!(out.contains(">R</p>"), "{out}");
    // Out of time for the user's profile: default content, never the visitor's.
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    let visitor = ProfileRead::Found(Box::new(buyer()), 1);
    let (headers, out) = serve(&mut page, named, Some(loaded(visitor)), Some(None));
    assert_eq!(
        header(&headers, "x-attune"),
        Some("default;reason=kv-timeout")
    );
    assert!(out.contains(">D</p>"), "{out}");
    // No model: nothing to read again.
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    page.on_upstream(&named, NOW);
    let no_model = Loaded {
        model: Err(Fallback::NoData),
        profile: ProfileRead::Skipped,
    };
    assert!(!page.on_loaded(Some(no_model), true));
    // The same user as the demo cookie already named: no second read.
    let demo = Settings {
        demo_login: true,
        ..settings()
    };
    let mut page = Page::start(
        &request(Some("attune_demo_user=u-17850")),
        &demo,
        NOW,
        fresh_id,
    )
    .unwrap();
    page.on_upstream(&named, NOW);
    assert!(!page.on_loaded(Some(loaded(ProfileRead::Missing)), true));
    // An invalid user name keeps the visitor.
    let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
    page.on_upstream(
        &UpstreamHead {
            user: Some("two words"),
            ..html()
        },
        NOW,
    );
    assert!(!page.on_loaded(Some(loaded(ProfileRead::Missing)), true));
    assert_eq!(page.identity().kind, identity::Kind::Visitor);
}

#[test]
fn responses_attune_leaves_alone() {
    let s = settings();
    for (head, reason) in [
        (
            UpstreamHead {
                status: 404,
                ..html()
            },
            Bypass::Status,
        ),
        (
            UpstreamHead {
                content_type: Some("text/css"),
                ..html()
            },
            Bypass::NotHtml,
        ),
        (
            UpstreamHead {
                cache_control: Some("no-transform"),
                ..html()
            },
            Bypass::NoTransform,
        ),
    ] {
        let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
        assert_eq!(page.on_upstream(&head, NOW), Some(Outcome::Bypass(reason)));
    }
    let [(k1, v1), (k2, v2)] =
        pass_through_headers(Outcome::Bypass(Bypass::Upstream), NOW, NOW + 3);
    assert_eq!((k1, v1.as_str()), ("x-attune", "bypass;reason=upstream"));
    assert_eq!((k2, v2.as_str()), ("server-timing", "attune;dur=3"));
    let json: serde_json::Value =
        serde_json::from_str(&bypass_debug_json(Outcome::Bypass(Bypass::Bot))).unwrap();
    assert_eq!(json["outcome"], "bypass;reason=bot");
    assert_eq!(json["slots"], serde_json::json!([]));
}

#[test]
fn the_charset_of_the_content_type_reaches_the_rewrite() {
    let s = settings();
    for (ct, charset) in [
        ("text/html; charset=utf-8", Charset::Utf8),
        ("text/html", Charset::Unknown),
    ] {
        let mut page = Page::start(&request(None), &s, NOW, fresh_id).unwrap();
        let head = UpstreamHead {
            content_type: Some(ct),
            ..html()
        };
        assert_eq!(page.on_upstream(&head, NOW), None);
        page.on_loaded(None, true);
        assert_eq!(page.rewrite(NOW).charset, charset, "{ct}");
    }
}

#[test]
fn the_debug_header_is_visible_ascii() {
    let s = settings();
    let mut page = Page::start(
        &PageRequest {
            debug_token: Some("debug-token"),
            ..request(None)
        },
        &s,
        NOW,
        fresh_id,
    )
    .unwrap();
    page.on_upstream(&html(), NOW);
    page.on_loaded(Some(loaded(ProfileRead::Missing)), true);
    let inputs = page.rewrite(NOW);
    let slot = "<div data-attune-slot=\"r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd} \u{1F375}\" data-attune-strategy=\"trending\"><p data-attune-item><b data-attune-field=\"title\">x</b></p></div>";
    let (_, report) = rewrite_all(inputs, slot.as_bytes(), 3);
    let headers = page.response_headers(None, &report, NOW);
    let debug = header(&headers, "x-attune-debug").unwrap();
    assert!(
        debug.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{debug}"
    );
    let json: serde_json::Value = serde_json::from_str(debug).unwrap();
    assert_eq!(
        json["slots"][0]["slot"],
        "r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd} \u{1F375}"
    );
    for (name, value) in &headers {
        assert!(
            value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{name}: {value}"
        );
    }
}
