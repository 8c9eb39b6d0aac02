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
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_edge, util};

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

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The runtime workerd's CPU per request.
    cpu_ms: f64,
    /// The proxy workerd's CPU per request.
    proxy_cpu_ms: f64,
    errors: usize,
}

impl Sample {
    /// `cpu_ticks`: the runtime's and the proxy's CPU time over the cell.
    fn of(result: &LoadResult, cpu_ticks: (u64, u64), duration: Duration) -> Sample {
        let mut lat = result.latencies_us.clone();
        lat.sort_unstable();
        let n = lat.len();
        let pct = |p: usize| {
            if n == 0 {
                0.0
            } else {
                f64::from(lat[(n * p / 100).min(n - 1)]) / 1000.0
            }
        };
        let per_request = |ticks: u64| {
            if n == 0 {
                0.0
            } else {
                ticks as f64 * 1000.0 / clock_ticks_per_s() as f64 / n as f64
            }
        };
        Sample {
            rps: n as f64 / duration.as_secs_f64(),
            p50_ms: pct(50),
            p99_ms: pct(99),
            cpu_ms: per_request(cpu_ticks.0),
            proxy_cpu_ms: per_request(cpu_ticks.1),
            errors: result.errors,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn render(
    plan: &Plan,
    samples: &BTreeMap<(usize, usize, Variant), Vec<Sample>>,
    cold: &BTreeMap<Variant, Vec<f64>>,
    worker_gz: u64,
) -> String {
    let med = |page: usize, c: usize, v: Variant, f: fn(&Sample) -> f64| {
        median(
            samples
                .get(&(page, c, v))
                .map(|s| s.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    let mut out = format!(
        "Same `wrangler dev` (workerd), local mode; the pages come from an upstream on 127.0.0.1 \
         outside workerd. {} interleaved round(s), each restarting the workers; per cell \
         {} s of keep-alive load after {} ms of warm-up; medians over rounds. CPU is the utime + stime \
         per request of the workerd process that runs the worker (`/proc/<pid>/stat`); wrangler's \
         local proxy, a second workerd that forwards each request to it, is shown apart. Attune: release Worker, KV seeded, every response `personalized` (three \
         slots on each page: a variant hero, \"for you\" and trending on the home page; similar, \
         \"for you\" and trending on the product page); the JS worker fills the same slots from \
         the picks Attune made and answers the same bytes (checked each round). \"KV reads\" is a \
         fourth worker that makes the two KV reads Attune makes for a page (manifest and profile) \
         and passes the page through: under `wrangler dev` KV is a simulator inside the same \
         workerd, so its CPU is counted with the worker's, which on Cloudflare it is not.\n\n",
        plan.rounds,
        plan.cell.as_secs_f64(),
        plan.warmup.as_millis()
    );
    out.push_str(
        "| page, concurrency | req/s pass / JS / Attune | Attune ÷ JS | p50 ms pass / JS / Attune | p99 ms pass / JS / Attune | CPU ms/req pass / JS / Attune | proxy CPU ms/req |\n|---|---|---|---|---|---|---|\n",
    );
    let [p, j, a, k] = VARIANTS;
    let mut goals = Vec::new();
    for (page, (page_name, _)) in PAGES.iter().enumerate() {
        for (c, concurrency) in CONCURRENCY.iter().enumerate() {
            let rps = |v| med(page, c, v, |s| s.rps);
            let p50 = |v| med(page, c, v, |s| s.p50_ms);
            let p99 = |v| med(page, c, v, |s| s.p99_ms);
            let cpu = |v| med(page, c, v, |s| s.cpu_ms);
            let proxy = median(
                VARIANTS
                    .iter()
                    .flat_map(|&v| samples.get(&(page, c, v)).into_iter().flatten())
                    .map(|s| s.proxy_cpu_ms)
                    .collect(),
            );
            let _ = writeln!(
                out,
                "| {concurrency}, {page_name} | {:.0} / {:.0} / {:.0} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {proxy:.2} |",
                rps(p),
                rps(j),
                rps(a),
                rps(a) / rps(j),
                p50(p),
                p50(j),
                p50(a),
                p99(p),
                p99(j),
                p99(a),
                cpu(p),
                cpu(j),
                cpu(a),
            );
            goals.push((
                format!("{concurrency}, {page_name}"),
                rps(a) / rps(j),
                cpu(a) / cpu(j),
                p50(a) / p50(p),
                (cpu(a) - cpu(p), cpu(j) - cpu(p), cpu(k) - cpu(p)),
            ));
        }
    }
    out.push_str(
        "\nGoals (issue 17): Attune ≥ 1.2× the JS worker's req/s, ≤ its CPU per request, p50 ≤ 1.3× \
         pass-through.\n\n| page, concurrency | req/s Attune ÷ JS (≥ 1.2) | CPU Attune ÷ JS (≤ 1) | p50 Attune ÷ pass (≤ 1.3) | CPU over pass-through, Attune / JS / KV reads alone (ms) |\n|---|---|---|---|---|\n",
    );
    let mark = |ok: bool| if ok { "" } else { " ✗" };
    for (name, rps, cpu, p50, (extra_a, extra_j, extra_k)) in goals {
        let _ = writeln!(
            out,
            "| {name} | {rps:.2}{} | {cpu:.2}{} | {p50:.2}{} | {extra_a:.2} / {extra_j:.2} / {extra_k:.2} |",
            mark(rps >= 1.2),
            mark(cpu <= 1.0),
            mark(p50 <= 1.3),
        );
    }
    out.push_str(
        "\nFirst request on a fresh isolate (the home page, right after `wrangler dev` says it is \
         ready), ms, median (min–max) over rounds:\n\n| worker | first request |\n|---|---|\n",
    );
    for v in VARIANTS {
        let times = cold.get(&v).cloned().unwrap_or_default();
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.1} ({min:.1}–{max:.1}) |",
            v.name(),
            median(times)
        );
    }
    let _ = writeln!(
        out,
        "\nWorker: `index_bg.wasm` {} gzipped (goal: under 300 KB).",
        util::fmt_bytes(worker_gz)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The workers
// ---------------------------------------------------------------------------------------------

/// `wrangler dev` in its own process group (stopped with it on drop), and its workerd.
struct Wrangler {
    variant: Variant,
    child: Child,
    port: u16,
    workerd: Workerds,
}

impl Wrangler {
    fn start(variant: Variant, config: &Path, state: &Path) -> Result<Wrangler> {
        use std::os::unix::process::CommandExt;
        let port = free_port()?;
        let mut cmd = util::command(util::node_bin_dir().join("wrangler"));
        cmd.args(["dev", "--config"])
            .arg(config)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            // Not workerd's default 9229, which another wrangler dev may hold.
            .args(["--inspector-port", &free_port()?.to_string()])
            .arg("--persist-to")
            .arg(state)
            .args(["--var", &format!("ATTUNE_SESSION_KEY:{SESSION_KEY}")])
            .args(["--var", &format!("ATTUNE_PROFILE_KEY:{PROFILE_KEY}")])
            .args(["--var", &format!("ATTUNE_DEBUG_TOKEN:{DEBUG_TOKEN}")])
            .args(["--var", &format!("ATTUNE_DEV_KV_TOKEN:{DEV_KV_TOKEN}")])
            .env("NO_COLOR", "1")
            .env("CI", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting wrangler dev for {}", variant.name()))?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut w = Wrangler {
            variant,
            child,
            port,
            workerd: Workerds {
                runtime: 0,
                proxy: 0,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        let log = || lines.lock().map(|l| l.join("\n")).unwrap_or_default();
        loop {
            if log().contains("Ready on") {
                break;
            }
            if let Some(status) = w.child.try_wait()? {
                bail!(
                    "wrangler dev for {} exited ({status}):\n{}",
                    variant.name(),
                    log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "wrangler dev for {} was not ready within 180 s:\n{}",
                    variant.name(),
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The runtime workerd starts after the proxy; give it a moment to show up.
        loop {
            if let Some(found) = find_workerds(w.child.id(), port) {
                w.workerd = found;
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no runtime and proxy workerd under wrangler dev for {}",
                    variant.name()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }
}

impl Drop for Wrangler {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The two `workerd` processes under `wrangler dev`: the one that runs the Worker and the
/// proxy in front of it, which listens on the port the load goes to (`--socket-addr=entry=
/// 127.0.0.1:<port>`) and forwards every request to the first.
fn find_workerds(root: u32, port: u16) -> Option<Workerds> {
    let mut parent_of = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        parent_of.push((pid, ppid, comm.to_owned()));
    }
    let mut family = vec![root];
    let mut workerds = Vec::new();
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        for (pid, ppid, comm) in &parent_of {
            if *ppid == parent {
                if comm == "workerd" {
                    workerds.push(*pid);
                }
                family.push(*pid);
            }
        }
        i += 1;
    }
    let entry = format!("--socket-addr=entry=127.0.0.1:{port}");
    let is_proxy = |pid: &u32| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == entry.as_bytes()))
    };
    let proxy = workerds.iter().copied().find(is_proxy)?;
    let runtime = workerds.iter().copied().find(|p| !is_proxy(p))?;
    Some(Workerds { runtime, proxy })
}

#[derive(Clone, Copy, Debug)]
struct Workerds {
    /// Runs the Worker.
    runtime: u32,
    /// wrangler's local proxy: takes the request on the dev port and hands it to `runtime`.
    proxy: u32,
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("workerd (pid {pid}) is gone"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks_per_s() -> u64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn write_config(
    work: &Path,
    variant: Variant,
    upstream: &str,
    picks: &serde_json::Value,
) -> Result<PathBuf> {
    let root = util::root();
    let config = match variant {
        Variant::Attune => serde_json::json!({
            "name": "bench-attune",
            "main": root.join("edge/build/index.js"),
            "compatibility_date": COMPATIBILITY_DATE,
            "kv_namespaces": [{"binding": "ATTUNE_KV", "id": "00000000000000000000000000000000"}],
            "vars": {
                "ATTUNE_UPSTREAM": upstream,
                "ATTUNE_ORIGIN_INGEST_URL": "",
                // Generous, so that the machine's load never turns a page into default content:
                // the bench measures the personalized path.
                "ATTUNE_BUDGET_MS": "1000",
                "ATTUNE_DEMO_LOGIN": "1",
            },
        }),
        Variant::PassThrough => serde_json::json!({
            "name": "bench-pass-through",
            "main": root.join("lab/edge-bench/passthrough.js"),
            "compatibility_date": COMPATIBILITY_DATE,
            "vars": {"UPSTREAM": upstream},
        }),
        Variant::KvReads => serde_json::json!({
            "name": "bench-kv-reads",
            "main": root.join("lab/edge-bench/kvreads.js"),
            "compatibility_date": COMPATIBILITY_DATE,
            "kv_namespaces": [{"binding": "ATTUNE_KV", "id": "00000000000000000000000000000000"}],
            "vars": {
                "UPSTREAM": upstream,
                "PROFILE_KEY": fs::read_to_string(work.join("profile-key"))?.trim(),
            },
        }),
        Variant::JsRewriter => serde_json::json!({
            "name": "bench-htmlrewriter",
            "main": root.join("lab/edge-bench/htmlrewriter.js"),
            "compatibility_date": COMPATIBILITY_DATE,
            "vars": {"UPSTREAM": upstream, "PICKS": picks},
        }),
    };
    let dir = work.join(format!("config-{}", variant.slug()));
    fs::create_dir_all(&dir)?;
    let path = dir.join("wrangler.json");
    fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}

/// Seeds Attune's KV, then reads from its debug view what it picks for each page: the JS
/// worker's `PICKS` (`{path: {slot: {items: [...]} | {variant: name}}}`).
fn attune_picks(work: &Path, upstream: &str) -> Result<serde_json::Value> {
    let config = write_config(work, Variant::Attune, upstream, &serde_json::Value::Null)?;
    let w = Wrangler::start(Variant::Attune, &config, &work.join("state-attune"))?;
    let kv = fs::read(work.join("kv.json"))?;
    let r = request(
        w.port,
        "PUT",
        "/__attune/kv/bulk",
        &[
            ("authorization", &format!("Bearer {DEV_KV_TOKEN}")),
            ("content-type", "application/json"),
        ],
        &kv,
    )?;
    if r.status != 200 {
        bail!(
            "seeding KV answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let catalog: serde_json::Value = serde_json::from_slice(&fs::read(work.join("catalog.json"))?)?;
    let mut picks = serde_json::Map::new();
    for (_, path) in PAGES {
        let r = request(
            w.port,
            "GET",
            &format!("/__attune/debug?path={path}"),
            &[("x-attune-debug", DEBUG_TOKEN), ("cookie", COOKIE)],
            b"",
        )?;
        let debug: serde_json::Value = serde_json::from_slice(&r.body).with_context(|| {
            format!("debug view of {path}: {}", String::from_utf8_lossy(&r.body))
        })?;
        if debug["outcome"] != "personalized" {
            bail!("Attune does not personalize {path} for the bench visitor: {debug}");
        }
        let mut slots = serde_json::Map::new();
        for slot in debug["slots"].as_array().into_iter().flatten() {
            let name = slot["slot"].as_str().unwrap_or_default().to_owned();
            let fill = match slot["kind"].as_str() {
                Some("recs") => {
                    let items: Vec<serde_json::Value> = slot["picks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| catalog.get(p["item"].as_str()?).cloned())
                        .collect();
                    if items.is_empty() {
                        bail!("Attune picked nothing for slot {name} of {path}: {slot}");
                    }
                    serde_json::json!({ "items": items })
                }
                Some("variant") => serde_json::json!({ "variant": slot["chosen"] }),
                _ => serde_json::json!({}),
            };
            slots.insert(name, fill);
        }
        if slots.len() < 3 {
            bail!("{path}: expected three slots in Attune's report, got {debug}");
        }
        picks.insert((*path).to_owned(), serde_json::Value::Object(slots));
    }
    Ok(serde_json::Value::Object(picks))
}

/// Attune and the JS worker must answer the same page for the same picks, and it must differ
/// from the upstream's (the slots were filled).
fn same_bytes(js_port: u16, attune_port: u16, path: &str) -> Result<()> {
    let headers = page_headers();
    let js = request(js_port, "GET", path, &headers, b"")?;
    let attune = request(attune_port, "GET", path, &headers, b"")?;
    if attune
        .header("x-attune")
        .is_none_or(|h| !h.starts_with("personalized"))
    {
        bail!(
            "Attune did not personalize {path}: {:?}",
            attune.header("x-attune")
        );
    }
    if js.body != attune.body {
        let at = js
            .body
            .iter()
            .zip(&attune.body)
            .position(|(a, b)| a != b)
            .unwrap_or(js.body.len().min(attune.body.len()));
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(80)..(at + 80).min(b.len())]).into_owned()
        };
        bail!(
            "{path}: the JS worker and Attune differ at byte {at} (lengths {} and {}):\nJS:     {}\nAttune: {}",
            js.body.len(),
            attune.body.len(),
            around(&js.body),
            around(&attune.body)
        );
    }
    Ok(())
}

fn page_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("user-agent", USER_AGENT),
        ("accept", "text/html"),
        ("cookie", COOKIE),
    ]
}

/// The first request of a fresh isolate, timed (ms), retried while the port does not accept
/// yet.
fn timed_get(port: u16, path: &str) -> Result<(f64, Response)> {
    let started = Instant::now();
    loop {
        match request(port, "GET", path, &page_headers(), b"") {
            Ok(r) => return Ok((started.elapsed().as_secs_f64() * 1000.0, r)),
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over std: the upstream, one-off requests and the load generator
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    if !body.is_empty() || method != "GET" {
        let _ = write!(req, "content-length: {}\r\n", body.len());
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on its own connection.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut all = headers.to_vec();
    all.push(("connection", "close"));
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(&request_bytes(port, method, path, &all, body))?;
    Ok(read_response(&mut conn)?)
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let close = get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
        close,
    })
}

/// The upstream site: the bench's pages, over keep-alive HTTP/1.1, one thread per connection.
struct Upstream {
    base: String,
}

impl Upstream {
    fn start(site: &Path) -> Result<Upstream> {
        let mut pages = BTreeMap::new();
        for entry in fs::read_dir(site)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            pages.insert(format!("/{name}"), fs::read(entry.path())?);
        }
        let pages = Arc::new(pages);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let pages = Arc::clone(&pages);
                std::thread::spawn(move || {
                    let _ = serve(stream, &pages);
                });
            }
        });
        Ok(Upstream { base })
    }
}

fn serve(stream: TcpStream, pages: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let path = path.split('?').next().unwrap_or("/").to_owned();
        let mut close = false;
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                }
            }
        }
        let mut discard = vec![0; length];
        reader.read_exact(&mut discard)?;
        let mut out = Vec::new();
        match pages.get(&path) {
            Some(page) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
                    page.len()
                );
                out.extend_from_slice(page);
            }
            None => out.extend_from_slice(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found",
            ),
        }
        reader.get_mut().write_all(&out)?;
        if close {
            return Ok(());
        }
    }
}

struct LoadResult {
    latencies_us: Vec<u32>,
    errors: usize,
}

/// `concurrency` keep-alive connections, each sending the next request as soon as the last
/// response has been read, for `duration`. `check`: a response must be `x-attune:
/// personalized` to count (anything else is an error).
fn load(
    port: u16,
    path: &str,
    concurrency: usize,
    duration: Duration,
    check: bool,
) -> Result<LoadResult> {
    let request = Arc::new(request_bytes(port, "GET", path, &page_headers(), b""));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let request = Arc::clone(&request);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                                conn = Some(BufReader::new(s));
                            }
                            Err(_) => {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let started = Instant::now();
                    let reply = c
                        .get_mut()
                        .write_all(&request)
                        .and_then(|()| read_response(c));
                    let elapsed = started.elapsed();
                    match reply {
                        Ok(r) => {
                            let ok = r.status == 200
                                && (!check
                                    || r.header("x-attune")
                                        .is_some_and(|h| h.starts_with("personalized")));
                            if ok && !stop.load(Ordering::Relaxed) {
                                latencies
                                    .push(elapsed.as_micros().min(u128::from(u32::MAX)) as u32);
                            } else if !ok {
                                errors += 1;
                            }
                            if r.close {
                                conn = None;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut result = LoadResult {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        result.latencies_us.extend(l);
        result.errors += e;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn chunked_and_sized_responses_are_read_whole_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-attune: personalized\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
                  HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            )
            .unwrap();
        });
        let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
        let first = read_response(&mut conn).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice(), first.close),
            (200, &b"hello world"[..], false)
        );
        assert_eq!(first.header("X-Attune"), Some("personalized"));
        let second = read_response(&mut conn).unwrap();
        assert_eq!(
            (second.status, second.body.as_slice(), second.close),
            (404, &b"abc"[..], true)
        );
        server.join().unwrap();
    }

    #[test]
    fn the_upstream_serves_pages_over_keep_alive() {
        let dir = std::env::temp_dir().join(format!("attune-bench-edge-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.html"), b"<p>a</p>").unwrap();
        let upstream = Upstream::start(&dir).unwrap();
        let port: u16 = upstream.base.rsplit(':').next().unwrap().parse().unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut conn = BufReader::new(stream);
        for (path, status, body) in [
            ("/a.html", 200, &b"<p>a</p>"[..]),
            ("/b.html", 404, b"not found"),
        ] {
            conn.get_mut()
                .write_all(&request_bytes(port, "GET", path, &[], b""))
                .unwrap();
            let r = read_response(&mut conn).unwrap();
            assert_eq!((r.status, r.body.as_slice()), (status, body));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_process_cpu_time_is_readable() {
        let before = cpu_ticks(std::process::id()).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(std::process::id()).unwrap() > before);
    }
}
