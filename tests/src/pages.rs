//! Page-level helpers shared by the end-to-end and browser tests: the debug explanation of a
//! page, its slots and picks, and a stack loaded with the sample.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use attune_harness::Service;
use serde_json::Value;

use crate::http::{Reply, Visitor};
use crate::scenario::eventually;
use crate::stack::{Stack, StackOptions};
use crate::{DEBUG_TOKEN, worker_built};

pub const SAMPLE: &str = "data/online-retail/online_retail_sample.csv";

pub fn skip_without_worker() -> bool {
    if worker_built() {
        return false;
    }
    println!(
        "SKIPPED: edge/build or node_modules missing; run `cargo xtask build-edge` (cargo xtask test does)"
    );
    true
}

/// The debug explanation of one page for this visitor (the same request a page view makes).
pub fn debug(v: &mut Visitor, path: &str) -> Result<(Reply, Value)> {
    // The page view itself (cookies, session, impressions), then the debug route, which renders
    // the same page for the same cookies to the end and explains every slot (the page's own
    // `x-attune-debug` header only covers the slots in its first chunk).
    let page = v.get(path)?;
    let r = v.get_with(
        &format!("/__attune/debug?path={path}"),
        &[("x-attune-debug", DEBUG_TOKEN)],
    )?;
    if r.status != 200 {
        bail!("debug route: {} {}", r.status, r.text());
    }
    let json: Value = serde_json::from_slice(&r.body)
        .with_context(|| format!("debug is not JSON: {}", r.text()))?;
    Ok((page, json))
}

pub fn slot<'a>(debug: &'a Value, name: &str) -> Option<&'a Value> {
    debug["slots"]
        .as_array()?
        .iter()
        .find(|s| s["slot"] == name)
}

pub fn picks(debug: &Value, name: &str) -> Vec<(String, String)> {
    slot(debug, name)
        .and_then(|s| s["picks"].as_array())
        .map(|p| {
            p.iter()
                .map(|p| {
                    (
                        p["item"].as_str().unwrap_or("").to_string(),
                        p["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Hrefs of the items inside one slot of the rendered HTML, in order.
pub fn slot_hrefs(html: &str, name: &str) -> Vec<String> {
    let marker = format!("data-attune-slot=\"{name}\"");
    let Some(start) = html.find(&marker) else {
        return Vec::new();
    };
    let section = &html[start..];
    let end = section.find("</section>").unwrap_or(section.len());
    section[..end]
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Starts the stack, imports the sample, and waits until the model reached the Worker.
pub fn stack_with_sample() -> Result<Stack> {
    let stack = Stack::start(StackOptions::default())?;
    let out = stack.lab_cli(&["import-retail", SAMPLE])?;
    println!("import-retail: {}", out.trim());
    let mut probe = Visitor::new(&stack.worker_url);
    let mut last = String::new();
    let ready = eventually(
        Duration::from_secs(90),
        "the published model reaches the Worker",
        || {
            let (r, d) = debug(&mut probe, "/")?;
            let ready = r.header("x-attune").is_some_and(|h| h == "personalized")
                && !picks(&d, "trending").is_empty();
            last = format!("x-attune: {:?}, debug: {d}", r.header("x-attune"));
            Ok(ready.then_some(()))
        },
    );
    if let Err(e) = ready {
        let origin = stack
            .origin
            .as_ref()
            .map(Service::output)
            .unwrap_or_default();
        bail!(
            "{e:#}\nlast page: {last}\norigin output:\n{origin}\nworker output:\n{}",
            stack.worker.output()
        );
    }
    Ok(stack)
}
