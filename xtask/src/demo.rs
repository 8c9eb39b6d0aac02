//! `cargo xtask demo`: the whole of Attune on one machine.
//!
//! Installs what is missing, builds the Worker and the origin, starts the origin on its
//! embedded defaults (publishing to the Worker's dev KV route) and the Worker under
//! `wrangler dev` in front of the demo shop, imports the shipped Online Retail sample through
//! the origin's ingest API, waits until the first snapshots are in the Worker's local KV, then
//! prints a short tour. Runs until Ctrl-C, then stops the origin (drain, commit, flush) and the
//! Worker, in that order. `--kafka` starts a local Apache Kafka broker first and runs the origin
//! on it (`--source kafka`); the broker goes last.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use attune_harness::{OnDrop, Service, Stopped, WranglerDev, http_get, port_is_free};
use attune_kafka_harness::{Broker, BrokerOptions};

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

const USAGE: &str = "cargo xtask demo [--keep-state] [--kafka]

  --keep-state   keep .attune/demo from the last run (default: start from empty state)
  --kafka        run the origin on a local Apache Kafka broker (data in .attune/demo/kafka)
                 instead of its embedded log";

pub fn cmd(args: &[String]) -> Result<()> {
    let mut keep_state = false;
    let mut kafka = false;
    for arg in args {
        match arg.as_str() {
            "--keep-state" => keep_state = true,
            "--kafka" => kafka = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("demo: unknown option `{other}`\n{USAGE}"),
        }
    }
    let root = util::root();
    for port in [WORKER_PORT, ORIGIN_PORT] {
        if !port_is_free(port) {
            bail!(
                "port {port} on 127.0.0.1 is taken: stop whatever listens there (an earlier demo?) and retry"
            );
        }
    }

    step("1/5 installing what is missing");
    bootstrap::ensure(bootstrap::Options::default())?;
    if kafka {
        bootstrap::ensure_kafka(true)?;
    }
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
    // Declared before the origin, so it outlives it (dropping it kills the broker).
    let broker = if kafka {
        let options = BrokerOptions {
            dir: Some(state.join("kafka")),
            provision: false,
            ..BrokerOptions::default()
        };
        let broker = Broker::start(&options).context("starting the Kafka broker")?;
        println!(
            "Kafka broker ready on {} (log: {})",
            broker.bootstrap_servers(),
            broker.log_path().display()
        );
        Some(broker)
    } else {
        None
    };
    let kv_url = format!("http://127.0.0.1:{WORKER_PORT}/__attune/kv");
    let mut origin_cmd = util::command(&origin_bin);
    origin_cmd
        .args(["serve", "--listen", &format!("127.0.0.1:{ORIGIN_PORT}")])
        .arg("--data-dir")
        .arg(state.join("origin"))
        .args(["--kv-url", &kv_url, "--rules", RULES])
        .env("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
        .env("ATTUNE_PROFILE_KEY", PROFILE_KEY)
        .env("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN);
    if let Some(broker) = &broker {
        origin_cmd.args([
            "--source",
            "kafka",
            "--brokers",
            &broker.bootstrap_servers(),
        ]);
    }
    let mut origin = spawn("origin", origin_cmd, &state.join("origin.log"))?;
    wait_http(
        &mut origin,
        ORIGIN_PORT,
        "/healthz",
        Duration::from_secs(30),
        &stop,
    )?;
    println!("origin ready on http://127.0.0.1:{ORIGIN_PORT} (log: .attune/demo/origin.log)");

    let ingest = format!("http://127.0.0.1:{ORIGIN_PORT}/v1/events");
    let dev = WranglerDev::new(WORKER_PORT, state.join("kv"))
        .var("ATTUNE_SESSION_KEY", SESSION_KEY)
        .var("ATTUNE_PROFILE_KEY", PROFILE_KEY)
        .var("ATTUNE_DEBUG_TOKEN", DEBUG_TOKEN)
        .var("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN)
        .var("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
        .var("ATTUNE_ORIGIN_INGEST_URL", ingest)
        .var("ATTUNE_DEMO_LOGIN", 1);
    // The repository's own wrangler.toml: its build step (`cargo xtask build-edge`) finds the
    // Worker just built and returns at once.
    let mut wrangler = util::command(util::node_bin_dir().join("wrangler"));
    dev.apply(&mut wrangler);
    let mut worker = spawn("wrangler dev", wrangler, &state.join("wrangler.log"))?;
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
            return Err(e.into());
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

/// Starts a child in its own process group (so Ctrl-C reaches only this runner, which then
/// stops the children in order), its output written to a log file. Whatever way the demo ends
/// (an error included), no child outlives it: dropped, it gets SIGTERM and 5 s to exit.
fn spawn(name: &str, cmd: Command, log: &Path) -> Result<Service> {
    println!("$ {}", util::display(&cmd));
    Ok(
        Service::spawn_logged(name, cmd, log)?.on_drop(OnDrop::Terminate {
            grace: Duration::from_secs(5),
        }),
    )
}

/// SIGTERM to the process group, then SIGKILL after `grace`.
fn stop_service(p: &mut Service, grace: Duration) {
    match p.stop(grace) {
        Ok(Stopped::Exited(status)) => println!("{} stopped ({status})", p.name()),
        Ok(Stopped::Killed) => println!("{} killed after {grace:?}", p.name()),
        Err(e) => eprintln!("demo: stopping {}: {e:#}", p.name()),
    }
}

fn shutdown(mut origin: Service, mut worker: Service) -> Result<()> {
    println!("\nstopping…");
    // The origin first: it drains its queue and flushes pending publishes to the Worker.
    stop_service(&mut origin, Duration::from_secs(15));
    stop_service(&mut worker, Duration::from_secs(10));
    Ok(())
}

/// Waits until `GET path` answers 200, failing early when the process exits or Ctrl-C is
/// pressed.
fn wait_http(
    p: &mut Service,
    port: u16,
    path: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let what = format!("answer {path} on port {port}");
    p.wait_until(&what, timeout, || {
        if stop.load(Ordering::SeqCst) {
            return Some(Err(anyhow!("interrupted")));
        }
        http_get(port, path, &[])
            .is_ok_and(|r| r.status == 200)
            .then_some(Ok(()))
    })?
}
