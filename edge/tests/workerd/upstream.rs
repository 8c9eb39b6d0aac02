//! The Worker in front of a real upstream and the shared cache.

use std::time::Duration;

use crate::seed::{model_pairs, seed};
use crate::site::Site;
use crate::support::{DEBUG_TOKEN, get, start_with};

/// The shared cache behind a real upstream (issue 17): a signed-in visitor's page never
/// reaches anyone else, with or without the operator's default TTL; Attune's cookies and its
/// debug token never reach the site; text in a Latin-1 page; an unreachable site is a `502`.
#[test]
fn a_real_upstream_and_the_shared_cache() {
    let mut site = Site::start();
    let Some(w) = start_with(&site.url(), &[("ATTUNE_HTML_TTL", "60")]) else {
        return;
    };
    let b = w.base.as_str();
    let vid = "0123456789abcdef0123456789abcdef";
    let alice = format!("sessionid=alice; attune_vid={vid}; attune_consent=yes");
    let alice_basic = "Basic YWxpY2U6c2VjcmV0";
    // A put into the cache runs after the response (waitUntil): give it time to land.
    let settle = || std::thread::sleep(Duration::from_millis(700));

    // The cache works here: a page the site says is public is served once, to anyone
    // without credentials.
    let first = get(b, "/public/a", &[]);
    assert!(first.text().contains("request 1"), "{}", first.text());
    settle();
    let second = get(b, "/public/a", &[("cookie", &format!("attune_vid={vid}"))]);
    assert!(
        second.text().contains("request 1"),
        "from the cache: {}",
        second.text()
    );
    assert_eq!(site.served("/public/a"), 1);
    // So does the operator's default TTL for an anonymous page without cache headers.
    assert!(
        get(b, "/none/anonymous", &[])
            .text()
            .contains("Signed in as nobody")
    );
    settle();
    assert!(get(b, "/none/anonymous", &[]).text().contains("request 1"));
    assert_eq!(site.served("/none/anonymous"), 1);

    // The four leak cases: Alice first, then Bob (signed in) and a visitor without
    // credentials. Neither ever sees Alice's page; every request reaches the site.
    for (path, credentials) in [
        ("/none/page", ("cookie", alice.as_str())),
        ("/no-cache/page", ("cookie", alice.as_str())),
        ("/vary-cookie/page", ("cookie", alice.as_str())),
        ("/private/page", ("cookie", alice.as_str())),
        ("/basic/page", ("authorization", alice_basic)),
    ] {
        let r = get(b, path, &[credentials]);
        assert_eq!(r.status, 200, "{path}");
        let text = r.text();
        assert!(
            text.contains("Signed in as alice") || text.contains(alice_basic),
            "{path}: {text}"
        );
        assert!(
            r.header("cache-control").unwrap_or("").contains("private"),
            "{path}"
        );
        settle();
        let bob = get(b, path, &[("cookie", "sessionid=bob")]).text();
        assert!(bob.contains("Signed in as bob"), "{path}: {bob}");
        let anonymous = get(b, path, &[]).text();
        assert!(
            anonymous.contains("Signed in as nobody"),
            "{path}: {anonymous}"
        );
        for seen in [&bob, &anonymous] {
            assert!(
                !seen.contains("alice") && !seen.contains(alice_basic),
                "{path}: {seen}"
            );
        }
        assert_eq!(
            site.served(path),
            3,
            "{path}: every request reached the site"
        );
    }

    // Nothing of Attune's went upstream.
    let requests = site.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(!r.debug_token, "{r:?}");
        if let Some(c) = &r.cookie {
            assert!(!c.contains("attune_"), "{r:?}");
        }
    }
    assert!(
        requests
            .iter()
            .any(|r| r.cookie.as_deref() == Some("sessionid=alice")),
        "the site's own cookie went through"
    );

    // A Latin-1 page: the inserted price is a character reference, the page's own bytes stay.
    seed(b, model_pairs());
    let r = get(b, "/latin1", &[]);
    assert_eq!(
        r.header("x-attune"),
        Some("personalized"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body.windows(11).any(|w| w == b"Ours: \xA31.00"),
        "{:?}",
        r.text()
    );
    assert!(r.text().contains("&#163;1.25"), "{}", r.text());
    assert!(
        !r.body.windows(2).any(|w| w == "\u{a3}".as_bytes()),
        "no UTF-8 £ inserted"
    );

    // A slot name that is not Latin-1 reaches the debug header as visible ASCII.
    let r = get(b, "/slots", &[("x-attune-debug", DEBUG_TOKEN)]);
    let debug = r.header("x-attune-debug").expect("debug header");
    assert!(
        debug.bytes().all(|c| c == b' ' || c.is_ascii_graphic()),
        "{debug}"
    );
    let debug: serde_json::Value = serde_json::from_str(debug).unwrap();
    assert_eq!(
        debug["slots"][0]["slot"],
        "r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd}"
    );

    // The site is gone: a 502 that says it is the upstream's, and the debug view says so too.
    site.shut_down();
    let r = get(b, "/none/gone", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-attune"), Some("bypass;reason=upstream"));
    let r = get(
        b,
        "/__attune/debug?path=/none/gone",
        &[("x-attune-debug", DEBUG_TOKEN)],
    );
    assert_eq!(r.status, 502);
    let debug: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(debug["outcome"], "bypass;reason=upstream");
}
