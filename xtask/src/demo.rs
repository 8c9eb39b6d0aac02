//! `cargo xtask demo`: the whole of Attune on one machine.
//!
//! Installs what is missing, builds the Worker and the origin, starts the origin on its
//! embedded defaults (publishing to the Worker's dev KV route) and the Worker under
//! `wrangler dev` in front of the demo shop, imports the shipped Online Retail sample through
//! the origin's ingest API, waits until the first snapshots are in the Worker's local KV, then
//! prints a short tour. Runs until Ctrl-C, then stops the origin (drain, commit, flush) and the
//! Worker, in that order.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{bootstrap, build_edge, util};

const WORKER_PORT: u16 = 8787;
const ORIGIN_PORT: u16 = 7878;
// Local-only demo secrets. A deployment sets its own with `wrangler secret put` (README).
const SESSION_KEY: &str = "demo-session-key";
const PROFILE_KEY: &str = "demo-profile-key";
const DEBUG_TOKEN: &str = "demo-debug";
const DEV_KV_TOKEN: &str = "demo-dev-kv-token";
const INGEST_TOKEN: &str = "demo-ingest-token";
const SAMPLE: &str = "data/online-retail/online_retail_sample.csv";
const RULES: &str = "examples/shop/rules.json";
/// The customer with the most orders in the sample (see examples/shop/public/login.html).
const DEMO_CUSTOMER: &str = "17850";

const USAGE: &str = "cargo xtask demo [--keep-state]

  --keep-state   keep .attune/demo from the last run (default: start from empty state)";

pub fn cmd(args: &[String]) -> Result<()> {
    let mut keep_state = false;
    for arg in args {
        match arg.as_str() {
            "--keep-state" => keep_state = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("demo: unknown option `{other}`\n{USAGE}"),
        }
    }
    let root = util::root();
    for port in [WORKER_PORT, ORIGIN_PORT] {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} on 127.0.0.1 is taken: stop whatever listens there (an earlier demo?) and retry"
            );
        }
    }

    step("1/5 installing what is missing");
    bootstrap::ensure(bootstrap::Options::default())?;
    step("2/5 building the Worker and the origin");
    build_edge::build(build_edge::Profile::Release, &root.join("edge"), false)?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "attune-origin",
        "--bin",
        "attune-origin",
        "-p",
        "attune-lab",
        "--bin",
        "attune-lab",
    ]))?;
    let origin_bin = root.join("target/release/attune-origin");
    let lab_bin = root.join("target/release/attune-lab");

    let state = root.join(".attune/demo");
    if !keep_state && state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state)?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }

    step("3/5 starting the origin and the Worker");
    let kv_url = format!("http://127.0.0.1:{WORKER_PORT}/__attune/kv");
    let mut origin = Process::spawn(
        "origin",
        util::command(&origin_bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{ORIGIN_PORT}")])
            .arg("--data-dir")
            .arg(state.join("origin"))
            .args(["--kv-url", &kv_url, "--rules", RULES])
            .env("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
            .env("ATTUNE_PROFILE_KEY", PROFILE_KEY)
            .env("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN),
        &state.join("origin.log"),
    )?;
    wait_http(
        &mut origin,
        ORIGIN_PORT,
        "/healthz",
        Duration::from_secs(30),
        &stop,
    )?;
    println!("origin ready on http://127.0.0.1:{ORIGIN_PORT} (log: .attune/demo/origin.log)");

    let ingest = format!("http://127.0.0.1:{ORIGIN_PORT}/v1/events");
    let vars = [
        format!("ATTUNE_SESSION_KEY:{SESSION_KEY}"),
        format!("ATTUNE_PROFILE_KEY:{PROFILE_KEY}"),
        format!("ATTUNE_DEBUG_TOKEN:{DEBUG_TOKEN}"),
        format!("ATTUNE_DEV_KV_TOKEN:{DEV_KV_TOKEN}"),
        format!("ATTUNE_INGEST_TOKEN:{INGEST_TOKEN}"),
        format!("ATTUNE_ORIGIN_INGEST_URL:{ingest}"),
        "ATTUNE_DEMO_LOGIN:1".to_string(),
    ];
    // The repository's own wrangler.toml: its build step (`cargo xtask build-edge`) finds the
    // Worker just built and returns at once.
    let mut wrangler = util::command(util::node_bin_dir().join("wrangler"));
    wrangler.arg("dev");
    wrangler.args([
        "--ip",
        "127.0.0.1",
        "--port",
        &WORKER_PORT.to_string(),
        "--persist-to",
    ]);
    wrangler.arg(state.join("kv"));
    for var in &vars {
        wrangler.args(["--var", var]);
    }
    wrangler.env("NO_COLOR", "1").env("CI", "1");
    let mut worker = Process::spawn("wrangler dev", &mut wrangler, &state.join("wrangler.log"))?;
    wait_http(
        &mut worker,
        WORKER_PORT,
        "/__attune/beacon.js",
        Duration::from_secs(300),
        &stop,
    )?;
    println!("Worker ready on http://127.0.0.1:{WORKER_PORT} (log: .attune/demo/wrangler.log)");

    step("4/5 importing the Online Retail sample (catalog + purchase events)");
    util::run(
        util::command(&lab_bin)
            .args([
                "import-retail",
                SAMPLE,
                "--url",
                &format!("http://127.0.0.1:{ORIGIN_PORT}"),
            ])
            .env("ATTUNE_INGEST_TOKEN", INGEST_TOKEN),
    )?;

    step("5/5 waiting for the first snapshots to reach the Worker's KV");
    let started = Instant::now();
    let demo_cookie = format!("attune_demo_user={DEMO_CUSTOMER}");
    loop {
        if stop.load(Ordering::SeqCst) {
            return shutdown(origin, worker);
        }
        origin.check()?;
        worker.check()?;
        if let Ok(r) = http_get(
            WORKER_PORT,
            "/",
            &[("cookie", &demo_cookie), ("x-attune-debug", DEBUG_TOKEN)],
        ) {
            let debug = r.header("x-attune-debug").unwrap_or_default();
            if r.header("x-attune")
                .is_some_and(|h| h.starts_with("personalized"))
                && debug.contains("\"version\"")
            {
                println!(
                    "customer {DEMO_CUSTOMER}'s profile is at the edge after {:.1?}",
                    started.elapsed()
                );
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "no personalized page for customer {DEMO_CUSTOMER} after 120 s; see .attune/demo/*.log"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    print_tour();
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = origin.check().and_then(|_| worker.check()) {
            eprintln!("demo: {e:#}");
            let _ = shutdown(origin, worker);
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    shutdown(origin, worker)
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn print_tour() {
    let base = format!("http://127.0.0.1:{WORKER_PORT}");
    println!(
        r#"
Attune demo is running. Open {base}/ in a browser, or follow along with curl:

  1. The home page as a new visitor (trending picks, the default hero):
       curl -s -D - -o /dev/null -A 'Mozilla/5.0' {base}/ | grep -i '^x-attune'
  2. Look at a few products, then the home page again: "For you" now follows this session at
     once (the signed attune_s cookie), before the origin has published anything:
       {base}/p/22632.html  {base}/p/22865.html  {base}/p/84029E.html  then {base}/
  3. Act as customer {DEMO_CUSTOMER} (a real buyer in the sample): the "returning buyer" hero and
     picks from their purchase history, without the items they already bought:
       {base}/__attune/demo/login?user={DEMO_CUSTOMER}       (log out: {base}/__attune/demo/logout)
       curl -s -D - -o /dev/null -A 'Mozilla/5.0' -b attune_demo_user={DEMO_CUSTOMER} {base}/ | grep -i '^x-attune'
  4. Why these picks? The debug view explains every slot (reason codes from the core):
       curl -s -A 'Mozilla/5.0' -b attune_demo_user={DEMO_CUSTOMER} -H 'x-attune-debug: {DEBUG_TOKEN}' '{base}/__attune/debug?path=/'
  5. The origin's side: metrics, a user's profile, dead letters:
       curl -s http://127.0.0.1:{ORIGIN_PORT}/metrics | grep ^attune_
       curl -s -H 'authorization: Bearer {INGEST_TOKEN}' http://127.0.0.1:{ORIGIN_PORT}/v1/users/{DEMO_CUSTOMER}
  6. Privacy: Sec-GPC opts out (default content, no events):
       curl -s -D - -o /dev/null -A 'Mozilla/5.0' -H 'Sec-GPC: 1' {base}/ | grep -i '^x-attune'

Press Ctrl-C to stop (the origin drains and flushes, then the Worker stops)."#
    );
}

/// A child process in its own process group (so Ctrl-C reaches only this runner, which then
/// stops the children in order), its output appended to a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        println!("$ {}", util::display(cmd));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Fails if the process has exited, showing the end of its log.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM to the process group, then SIGKILL after `grace`.
    fn stop(mut self, grace: Duration) {
        self.terminate(grace);
    }

    fn terminate(&mut self, grace: Duration) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                println!("{} stopped ({status})", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        println!("{} killed after {grace:?}", self.name);
    }
}

impl Drop for Process {
    /// Whatever way the demo ends (an error included), no child outlives it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate(Duration::from_secs(5));
        }
    }
}

fn shutdown(origin: Process, worker: Process) -> Result<()> {
    println!("\nstopping…");
    // The origin first: it drains its queue and flushes pending publishes to the Worker.
    origin.stop(Duration::from_secs(15));
    worker.stop(Duration::from_secs(10));
    Ok(())
}

fn wait_http(
    p: &mut Process,
    port: u16,
    path: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        p.check()?;
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if http_get(port, path, &[]).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer {path} on port {port} within {timeout:?}; see {}",
                p.name,
                p.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Reply {
    status: u16,
    head: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1 (the runner stays dependency-light on purpose).
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Mozilla/5.0 (attune demo)\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    Ok(Reply { status, head })
}
