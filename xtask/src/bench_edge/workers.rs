//! Starting the four workers (`wrangler dev` and its workerd), reading their CPU time, and
//! checking that the JS worker answers the same bytes as Attune.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use attune_harness::{OnDrop, Service, WranglerDev, free_port};

use super::http::{Response, request};
use super::{
    COMPATIBILITY_DATE, COOKIE, DEBUG_TOKEN, DEV_KV_TOKEN, PAGES, PROFILE_KEY, SESSION_KEY,
    USER_AGENT, Variant,
};
use crate::util;

/// How long `wrangler dev` gets to be ready, its two workerd included.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopped `wrangler dev` and its workerd get to exit before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `wrangler dev` in its own process group (stopped with it on drop), and its workerd.
pub(super) struct Wrangler {
    pub(super) variant: Variant,
    pub(super) port: u16,
    pub(super) workerd: Workerds,
    /// Held for its drop, which ends wrangler's group, workerd included.
    _service: Service,
}

impl Wrangler {
    pub(super) fn start(variant: Variant, config: &Path, state: &Path) -> Result<Wrangler> {
        let port = free_port()?;
        let dev = WranglerDev::new(port, state)
            .config(config)
            // Not workerd's default 9229, which another wrangler dev may hold.
            .inspector_port(free_port()?)
            .var("ATTUNE_SESSION_KEY", SESSION_KEY)
            .var("ATTUNE_PROFILE_KEY", PROFILE_KEY)
            .var("ATTUNE_DEBUG_TOKEN", DEBUG_TOKEN)
            .var("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN);
        let mut cmd = util::command(util::node_bin_dir().join("wrangler"));
        dev.apply(&mut cmd);
        let name = format!("wrangler dev for {}", variant.name());
        let mut service =
            Service::spawn(name, cmd)?.on_drop(OnDrop::Terminate { grace: STOP_GRACE });
        let started = Instant::now();
        service.wait_for_line("Ready on", START_TIMEOUT)?;
        // The runtime workerd starts after the proxy; give it a moment to show up.
        let root = service.id();
        let workerd = service.wait_until(
            "start its runtime and proxy workerd",
            START_TIMEOUT.saturating_sub(started.elapsed()),
            || find_workerds(root, port),
        )?;
        Ok(Wrangler {
            variant,
            port,
            workerd,
            _service: service,
        })
    }
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
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
pub(super) struct Workerds {
    /// Runs the Worker.
    pub(super) runtime: u32,
    /// wrangler's local proxy: takes the request on the dev port and hands it to `runtime`.
    pub(super) proxy: u32,
}

/// utime + stime of a process (all its threads), in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> Result<u64> {
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

pub(super) fn clock_ticks_per_s() -> u64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub(super) fn write_config(
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
pub(super) fn attune_picks(work: &Path, upstream: &str) -> Result<serde_json::Value> {
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
pub(super) fn same_bytes(js_port: u16, attune_port: u16, path: &str) -> Result<()> {
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

pub(super) fn page_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("user-agent", USER_AGENT),
        ("accept", "text/html"),
        ("cookie", COOKIE),
    ]
}

/// The first request of a fresh isolate, timed (ms), retried while the port does not accept
/// yet.
pub(super) fn timed_get(port: u16, path: &str) -> Result<(f64, Response)> {
    let started = Instant::now();
    loop {
        match request(port, "GET", path, &page_headers(), b"") {
            Ok(r) => return Ok((started.elapsed().as_secs_f64() * 1000.0, r)),
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
