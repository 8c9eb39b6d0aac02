//! The Worker in front of the shop's own assets: default content before any data, the dev
//! route, personalized slots, the debug view, fallbacks, sessions, pass-through, GPC, the
//! beacon, and a missing manifest.

use attune_core::Profile;
use attune_core::wire::{Envelope, encode, encode_profile};

use crate::seed::{model_pairs, pair, pkey, profile_of_buyer, seed};
use crate::support::{
    BROWSER, DEBUG_TOKEN, DEV_TOKEN, agent, convert, file, get, now_ms, send, start,
};

#[test]
fn the_worker_in_workerd() {
    let Some(w) = start() else {
        return;
    };
    let b = w.base.as_str();

    // Before any data: default content, and the header says why.
    let r = get(b, "/index.html", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-attune"), Some("default;reason=no-data"));
    assert!(r.text().contains("HAND WARMER RED RETROSPOT"));

    // Dev route auth.
    let r = send(
        b,
        "PUT",
        "/__attune/kv/bulk",
        &[("authorization", "Bearer nope")],
        b"[]",
    );
    assert_eq!(r.status, 401);
    let r = send(b, "PUT", "/__attune/kv/bulk", &[], b"[]");
    assert_eq!(r.status, 401);

    let now = now_ms();
    let mut pairs = model_pairs();
    pairs.push(pair(
        &pkey("17850"),
        &encode_profile(
            &Envelope::new(5, now, profile_of_buyer(now)),
            attune_core::wire::PROFILE_CAP_BYTES,
        ),
        5,
    ));
    pairs.push(pair(&pkey("corrupt"), b"\xc1\xc1 not msgpack", 1));
    let mut future = Envelope::new(1, now, Profile::default());
    future.schema = 2 << 8;
    pairs.push(pair(&pkey("future"), &encode(&future), 1));
    seed(b, pairs);

    // Personalized slots for the seeded buyer (demo login cookie = logged-in user).
    let user = [
        ("cookie", "attune_demo_user=17850"),
        ("x-attune-debug", DEBUG_TOKEN),
    ];
    let r = get(b, "/index.html", &user);
    let html = r.text();
    assert_eq!(
        r.header("x-attune"),
        Some("personalized"),
        "{:?}",
        r.headers
    );
    assert!(r.header("cache-control").unwrap_or("").contains("private"));
    assert!(
        r.header("server-timing")
            .unwrap_or("")
            .contains("attune;dur=")
    );
    assert!(html.contains("Welcome back"), "returning-buyer hero");
    assert!(!html.contains("Welcome to the Attune Gift Shop"));
    assert!(
        html.contains(r#"data-attune-item="22910""#),
        "neighbour of a purchase"
    );
    assert!(
        !html.contains(r#"data-attune-item="22086""#),
        "purchased items are excluded"
    );
    assert!(html.contains("Tom &amp; Jerry's &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>alert(1)"));
    assert!(!html.contains("javascript:"));
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").expect("debug header")).unwrap();
    assert_eq!(debug["identity"], "user");
    assert_eq!(debug["profile"]["version"], 5);
    assert!(
        debug["segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "buyer")
    );
    // The same explanation from the debug route; without the token, 401.
    let r = get(b, "/__attune/debug?path=/index.html", &user);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("profile-neighbour") || r.text().contains("trending"));
    let refused = get(b, "/__attune/debug?path=/", &[]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    // A page Attune leaves alone is explained as JSON too, never served as the page.
    let r = get(b, "/__attune/debug?path=/style.css", &user);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let debug: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(debug["outcome"], "bypass;reason=not-html");
    let r = get(b, "/__attune/debug?path=//evil.example/", &user);
    assert_eq!(r.status, 400);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_ok());

    // Fallbacks on bad profile snapshots.
    for (who, reason) in [("corrupt", "bad-snapshot"), ("future", "unknown-schema")] {
        let cookie = format!("attune_demo_user={who}");
        let r = get(b, "/index.html", &[("cookie", &cookie)]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-attune"),
            Some(format!("default;reason={reason}").as_str())
        );
        assert!(
            r.text().contains("HAND WARMER RED RETROSPOT"),
            "author defaults"
        );
    }

    // A product page joins the session; a tampered session cookie means a fresh session.
    let r = get(b, "/p/85123A.html", &[]);
    assert_eq!(r.header("x-attune"), Some("personalized"));
    let session = r
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("attune_s="))
        .expect("session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = get(
        b,
        "/index.html",
        &[("cookie", &session), ("x-attune-debug", DEBUG_TOKEN)],
    );
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").unwrap()).unwrap();
    assert_eq!(debug["session_items"][0], "85123A");
    let tampered = format!("{session}x");
    let r = get(
        b,
        "/index.html",
        &[("cookie", &tampered), ("x-attune-debug", DEBUG_TOKEN)],
    );
    assert_eq!(r.status, 200);
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").unwrap()).unwrap();
    assert_eq!(debug["session_items"].as_array().map(Vec::len), Some(0));
    assert!(r.cookies().iter().any(|c| c.starts_with("attune_s=1.")));

    // Pass-through, byte-identical.
    let css = get(b, "/style.css", &[]);
    assert_eq!(css.header("x-attune"), Some("bypass;reason=not-html"));
    assert_eq!(css.body, file("style.css"));
    let missing = get(b, "/no/such/page.html", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-attune"), Some("bypass;reason=status"));
    assert_eq!(missing.body, file("404.html"));
    let bot = get(
        b,
        "/index.html",
        &[("user-agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")],
    );
    assert_eq!(bot.header("x-attune"), Some("bypass;reason=bot"));
    assert_eq!(bot.body, file("index.html"));
    assert!(bot.cookies().is_empty(), "no cookies for bots");
    let range = get(b, "/index.html", &[("range", "bytes=0-99")]);
    assert_eq!(range.header("x-attune"), Some("bypass;reason=range"));
    assert_eq!(range.body, file("index.html")[..range.body.len()]);
    let head = convert(
        agent()
            .head(format!("{b}/index.html"))
            .header("user-agent", BROWSER)
            .call()
            .unwrap(),
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-attune"), Some("bypass;reason=method"));
    // GPC: default content (the page as the author wrote it), no cookies, no lookups.
    let gpc = get(
        b,
        "/index.html",
        &[("sec-gpc", "1"), ("cookie", "attune_demo_user=17850")],
    );
    assert_eq!(gpc.header("x-attune"), Some("bypass;reason=consent"));
    assert_eq!(gpc.body, file("index.html"));
    assert!(gpc.cookies().is_empty());

    // Beacon.
    let js = get(b, "/__attune/beacon.js", &[]);
    assert_eq!(js.status, 200);
    assert!(js.body.len() < 2048);
    let ev = |body: &[u8]| {
        send(
            b,
            "POST",
            "/__attune/events",
            &[("content-type", "application/json")],
            body,
        )
    };
    assert_eq!(ev(b"{not json").status, 400);
    assert_eq!(ev(br#"[{"kind":"hover","item":"x"}]"#).status, 400);
    assert_eq!(ev(&vec![b' '; 70 * 1024]).status, 400);
    let ok = ev(br#"[{"kind":"view","item":"85123A"},{"kind":"click","item":"22086"}]"#);
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert!(ok.text().contains(r#""accepted":2"#));

    // Missing manifest: default content everywhere.
    let r = send(
        b,
        "POST",
        "/__attune/kv/bulk/delete",
        &[("authorization", &format!("Bearer {DEV_TOKEN}"))],
        br#"["m"]"#,
    );
    assert_eq!(r.status, 200);
    let r = get(b, "/index.html", &[("cookie", "attune_demo_user=17850")]);
    assert_eq!(r.header("x-attune"), Some("default;reason=no-data"));
    assert!(r.text().contains("HAND WARMER RED RETROSPOT"));
}
