//! A real browser: Debian's Chromium, headless, driven by playwright-core (tests/browser/
//! check.mjs), loads the demo home page and a product page through `wrangler dev`. Asserts on
//! the rendered DOM (slots hold personalized items, one variant visible), that the beacon
//! script ran (the origin applied the page's `view` event for this browser's visitor id), and
//! that the page logged no console errors. Screenshots go to `test-output/browser/` for a
//! person to look at.
//!
//! Skips, saying why, only when no Chromium is installed (`cargo xtask bootstrap --browser`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use attune_e2e::{
    INGEST_TOKEN, eventually, http, reply, repo_root, skip_without_worker, slot_hrefs,
    stack_with_sample,
};
use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    std::env::var_os("ATTUNE_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.is_file())
}

#[test]
fn pages_render_personalized_in_a_real_browser() -> Result<()> {
    if skip_without_worker() {
        return Ok(());
    }
    let Some(chromium) = chromium() else {
        println!(
            "SKIPPED: no Chromium found (apt-get install chromium, or cargo xtask bootstrap --browser)"
        );
        return Ok(());
    };
    let stack = stack_with_sample()?;
    let out_dir = repo_root().join("test-output/browser");
    let product = "/p/85123A.html";
    let urls = [
        format!("{}/", stack.worker_url),
        format!("{}{product}", stack.worker_url),
        format!("{}/", stack.worker_url),
    ];
    let output = Command::new("node")
        .current_dir(repo_root())
        .arg("tests/browser/check.mjs")
        .arg(&chromium)
        .arg(&out_dir)
        .args(&urls)
        .output()
        .context("running node tests/browser/check.mjs")?;
    if !output.status.success() {
        bail!(
            "browser driver failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("driver output: {}", String::from_utf8_lossy(&output.stdout)))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let pages = report["results"].as_array().context("results")?;
    let home_html = std::fs::read_to_string(repo_root().join("examples/shop/public/index.html"))?;
    let default_for_you = slot_hrefs(&home_html, "for-you");

    for page in pages {
        assert_eq!(page["status"], 200, "{page}");
        assert_eq!(page["xAttune"], "personalized", "{page}");
        assert!(
            page["errors"].as_array().is_some_and(Vec::is_empty),
            "no console or page errors: {page}"
        );
        assert_eq!(page["beaconScripts"], 1, "{page}");
        assert!(std::path::Path::new(page["screenshot"].as_str().unwrap_or("")).is_file());
        for slot in page["slots"].as_array().into_iter().flatten() {
            let variants = slot["variants"].as_array().cloned().unwrap_or_default();
            if !variants.is_empty() {
                let visible = variants.iter().filter(|v| v["visible"] == true).count();
                assert_eq!(visible, 1, "exactly one variant shows: {slot}");
            }
        }
    }
    let slot_items = |page: &Value, name: &str| -> Vec<String> {
        page["slots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["slot"] == name)
            .flat_map(|s| s["items"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["href"].as_str().map(str::to_string))
            .collect()
    };
    // The last page is the home page again, after the product page: the browser's session
    // cookie makes `for-you` follow the product it just saw.
    let after = slot_items(&pages[2], "for-you");
    assert_eq!(after.len(), default_for_you.len());
    assert_ne!(
        after, default_for_you,
        "the for-you slot holds personalized items"
    );
    assert_ne!(
        after,
        slot_items(&pages[0], "for-you"),
        "and they follow the visit"
    );
    assert!(
        !after.contains(&product.to_string()),
        "the product just seen is not re-recommended"
    );
    let similar = slot_items(&pages[1], "similar");
    assert!(
        !similar.is_empty() && !similar.contains(&product.to_string()),
        "{similar:?}"
    );

    // The beacon ran: the origin applied a `view` of 85123A for this browser's visitor id.
    let vid = report["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "attune_vid")
        .and_then(|c| c["value"].as_str())
        .context("the browser got an attune_vid cookie")?
        .to_string();
    eventually(
        Duration::from_secs(60),
        "the origin applies the browser's view event",
        || {
            let r = reply(
                http()
                    .get(format!("{}/v1/users/{vid}", stack.origin_url))
                    .header("authorization", format!("Bearer {INGEST_TOKEN}"))
                    .call()?,
            )?;
            Ok((r.status == 200 && r.text().contains("85123A")).then_some(()))
        },
    )?;
    Ok(())
}
