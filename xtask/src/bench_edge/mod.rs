//! `cargo xtask bench edge`: Attune's Worker against a pass-through worker and a JS worker that
//! does the same slot fill with workerd's built-in `HTMLRewriter`, under the same `workerd`
//! (`wrangler dev`, local mode, nothing leaves 127.0.0.1).
//!
//! - The pages (the shop's home page and a ~100 KB product page, `lab/edge-bench`) come from an
//!   upstream served by this process, so its CPU is not counted as the workers'.
//! - Attune runs the release Worker with its KV seeded (catalog, neighbours, trending, rules, a
//!   buyer's profile) and acts for that buyer, so every request personalizes: KV reads, ranking
//!   in wasm, the rewrite. A response that is not `x-attune: personalized` counts as an error.
//! - The JS worker gets the picks Attune made (read from its debug view) and must answer the
//!   same bytes as Attune for both pages; the bench stops if it does not.
//! - A fourth worker makes the two KV reads Attune makes and passes the page through: what
//!   the local KV simulator, which runs inside the same workerd, adds to Attune's CPU.
//! - Each round restarts the `wrangler dev`s, times the first request of each fresh
//!   isolate (cold start), then runs every cell (page × concurrency × worker, workers in a
//!   rotating order) for a fixed time with a keep-alive load generator of std threads. Medians
//!   over rounds are reported; the CPU per request is the workerd process's utime + stime
//!   (`/proc/<pid>/stat`) over the cell divided by its requests.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{build_edge, util};

mod http;
mod load;
mod report;
mod workers;

use http::Upstream;
use load::load;
use report::{Sample, render};
use workers::{Wrangler, attune_picks, copy_dir, cpu_ticks, same_bytes, timed_get, write_config};

const PROFILE_KEY: &str = "bench-profile-key";
const SESSION_KEY: &str = "bench-session-key";
const DEBUG_TOKEN: &str = "bench-debug-token";
const DEV_KV_TOKEN: &str = "bench-dev-kv-token";
const COMPATIBILITY_DATE: &str = "2026-04-01";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0";
/// A returning visitor signed in as the seeded buyer (the demo login cookie), with an analytics
/// cookie of the site's own, as real browsers carry: a request with site cookies is always
/// answered by the upstream, never from the shared cache, in all three workers alike.
const COOKIE: &str = "attune_vid=0123456789abcdef0123456789abcdef; attune_demo_user=bench-buyer; _ga=GA1.1.424242.1700000000";

const PAGES: &[(&str, &str)] = &[
    ("8.6 KB home", "/home.html"),
    ("100 KB product", "/product-long.html"),
];
const CONCURRENCY: &[usize] = &[1, 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    PassThrough,
    JsRewriter,
    Attune,
    /// Pass-through after the two KV reads Attune makes for a page: what those cost locally.
    KvReads,
}

const VARIANTS: [Variant; 4] = [
    Variant::PassThrough,
    Variant::JsRewriter,
    Variant::Attune,
    Variant::KvReads,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::PassThrough => "pass-through",
            Variant::JsRewriter => "JS HTMLRewriter",
            Variant::Attune => "Attune",
            Variant::KvReads => "KV reads + pass-through",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Variant::PassThrough => "pass",
            Variant::JsRewriter => "js",
            Variant::Attune => "attune",
            Variant::KvReads => "kv",
        }
    }
}

struct Plan {
    rounds: usize,
    cell: Duration,
    warmup: Duration,
}

/// Runs the edge bench; answers the commands to show and the markdown body.
pub fn run(quick: bool) -> Result<(Vec<String>, String)> {
    let plan = if quick {
        Plan {
            rounds: 1,
            cell: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
        }
    } else {
        Plan {
            rounds: 3,
            cell: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
        }
    };
    let root = util::root();
    build_edge::build(build_edge::Profile::Release, &root.join("edge"), false)?;
    let wrangler = util::node_bin_dir().join("wrangler");
    if !wrangler.is_file() {
        bail!(
            "{} is missing: run `cargo xtask bootstrap`",
            wrangler.display()
        );
    }
    let work = root.join("target").join("edge-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    util::run(
        util::cargo()
            .args(["run", "--quiet", "-p", "attune-edge-bench", "--", "prepare"])
            .arg("--out")
            .arg(&work)
            .args(["--profile-key", PROFILE_KEY]),
    )?;

    let upstream = Upstream::start(&work.join("site"))?;
    println!("bench edge: upstream on {}", upstream.base);
    let picks = attune_picks(&work, &upstream.base)?;
    // The KV-reads worker reads the KV Attune's was seeded with (its own copy: two wrangler devs
    // do not share a state directory).
    copy_dir(&work.join("state-attune"), &work.join("state-kv"))?;
    let configs: Vec<(Variant, PathBuf)> = VARIANTS
        .iter()
        .map(|&v| Ok((v, write_config(&work, v, &upstream.base, &picks)?)))
        .collect::<Result<_>>()?;

    let mut samples: BTreeMap<(usize, usize, Variant), Vec<Sample>> = BTreeMap::new();
    let mut cold: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
    for round in 0..plan.rounds {
        println!("bench edge: round {}/{}", round + 1, plan.rounds);
        // Fresh isolates each round: the first request of each is its cold start.
        let mut workers = Vec::new();
        for (i, (variant, config)) in configs.iter().enumerate() {
            let w = Wrangler::start(
                *variant,
                config,
                &work.join(format!("state-{}", variant.slug())),
            )?;
            let first = timed_get(w.port, PAGES[0].1)?;
            if first.1.status != 200 {
                bail!(
                    "{}: first request answered {}",
                    variant.name(),
                    first.1.status
                );
            }
            cold.entry(*variant).or_default().push(first.0);
            println!(
                "bench edge: {} ready (workerd pids: runtime {}, proxy {}), first request {:.1} ms",
                variant.name(),
                w.workerd.runtime,
                w.workerd.proxy,
                first.0
            );
            workers.push((i, w));
        }
        let port = |v: Variant| {
            workers
                .iter()
                .find(|(_, w)| w.variant == v)
                .map(|(_, w)| w.port)
                .unwrap_or_default()
        };
        for (_, path) in PAGES {
            same_bytes(port(Variant::JsRewriter), port(Variant::Attune), path)?;
        }
        for (page, (page_name, path)) in PAGES.iter().enumerate() {
            for (c, &concurrency) in CONCURRENCY.iter().enumerate() {
                for k in 0..VARIANTS.len() {
                    // Rotate the order within a cell so no worker always runs first or last.
                    let (_, w) = &workers[(k + round + page + c) % workers.len()];
                    let check = w.variant == Variant::Attune;
                    load(w.port, path, concurrency, plan.warmup, check)?;
                    let before = (cpu_ticks(w.workerd.runtime)?, cpu_ticks(w.workerd.proxy)?);
                    let result = load(w.port, path, concurrency, plan.cell, check)?;
                    let after = (cpu_ticks(w.workerd.runtime)?, cpu_ticks(w.workerd.proxy)?);
                    let sample = Sample::of(
                        &result,
                        (
                            after.0.saturating_sub(before.0),
                            after.1.saturating_sub(before.1),
                        ),
                        plan.cell,
                    );
                    println!(
                        "bench edge:   {page_name:<15} c={concurrency} {:<16} {:>7.1} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  cpu {:>6.2} ms/req (proxy {:.2})  errors {}",
                        w.variant.name(),
                        sample.rps,
                        sample.p50_ms,
                        sample.p99_ms,
                        sample.cpu_ms,
                        sample.proxy_cpu_ms,
                        sample.errors
                    );
                    if sample.errors > 0 {
                        bail!(
                            "{} on {path}: {} of {} responses were errors or not personalized",
                            w.variant.name(),
                            sample.errors,
                            result.latencies_us.len() + sample.errors
                        );
                    }
                    samples
                        .entry((page, c, w.variant))
                        .or_default()
                        .push(sample);
                }
            }
        }
        drop(workers);
    }

    let wasm = fs::read(root.join("edge/build/index_bg.wasm")).context("reading the Worker")?;
    let gz = build_edge::gzip_len(&wasm)?;
    let body = render(&plan, &samples, &cold, gz);
    println!("{body}");
    let command = format!(
        "cargo xtask bench edge{}",
        if quick { " --quick" } else { "" }
    );
    Ok((vec![command], body))
}
