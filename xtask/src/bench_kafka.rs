//! `cargo xtask bench kafka`: events per CPU-second of Attune's pipeline reading from Kafka
//! (durable state: redb checkpoints with the offsets), from its embedded log, and of the Kafka
//! Streams app (`lab/kafka/streams`, RocksDB, exactly-once), on the same broker, the same
//! events and the same machine, one after the other.
//!
//! The events are produced once by `lab/kafka/produce.py` (PyPI's client), which also writes
//! them as JSONL for the embedded log. CPU time is each process's own (user + system, all its
//! threads; the broker's is not counted for anyone), from its start to the moment its state
//! covering every event is durable: Attune's checkpoint holding the topic's end, its embedded
//! log replay's end, the Streams app's committed transaction. Wall-clock rates are each one's own
//! processing span (first record to durable end).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use attune_harness::Service;
use attune_kafka_harness::{Broker, BrokerOptions, provision};
use serde_json::Value;

use crate::{bootstrap, util};

const TOPIC: &str = "attune.events";
const LISTENING: &str = "attune-origin listening on ";

/// One engine's figures.
struct Run {
    name: &'static str,
    cpu_s: f64,
    wall_s: f64,
}

pub fn run(quick: bool) -> Result<(Vec<String>, String)> {
    let events: u64 = if quick { 50_000 } else { 300_000 };
    bootstrap::ensure_kafka(true)?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "attune-origin",
        "--bin",
        "attune-origin",
    ]))?;
    let origin = util::root().join("target/release/attune-origin");
    let work = util::root().join("target/bench-kafka");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let config = work.join("attune.toml");
    // Nothing published: the comparison is the stream processing with durable state.
    std::fs::write(&config, "[publish]\ntarget = \"none\"\n")?;

    let broker = Broker::start(&BrokerOptions {
        partitions: 4,
        provision: false,
        ..BrokerOptions::default()
    })
    .context("starting the broker")?;
    let brokers = broker.bootstrap_servers();
    let mut commands = Vec::new();

    let jsonl = work.join("events.jsonl");
    let mut produce = Command::new(provision::python());
    produce
        .arg(attune_kafka_harness::lab_dir().join("produce.py"))
        .args(["--bootstrap", &brokers, "--topic", TOPIC])
        .args(["--count", &events.to_string()])
        .args(["--users", "10000", "--items", "5000"])
        .arg("--events-out")
        .arg(&jsonl);
    commands.push(util::display(&produce));
    let produced = json_line(&output(&mut produce)?)?;
    if produced["produced"].as_u64() != Some(events) {
        bail!("produce.py did not produce {events} events: {produced}");
    }

    let mut runs = Vec::new();
    let mut replay = Command::new(&origin);
    replay
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(work.join("embedded"))
        .args(["--profile-key", "bench", "replay"])
        .arg(&jsonl);
    commands.push(util::display(&replay));
    let t = Instant::now();
    let (out, cpu_s) = with_cpu_time(&replay)?;
    let wall_s = t.elapsed().as_secs_f64();
    let replayed = json_line(&out)?;
    if replayed["applied"].as_u64().unwrap_or(0) + replayed["dlq"].as_u64().unwrap_or(0) != events {
        bail!("the embedded replay did not apply {events} events: {replayed}");
    }
    runs.push(Run {
        name: "Attune, embedded log (append + fsync, pipeline, redb checkpoints)",
        cpu_s,
        wall_s,
    });

    let mut serve = Command::new(&origin);
    serve
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(work.join("kafka"))
        .args(["--profile-key", "bench", "--listen", "127.0.0.1:0"])
        .args(["--insecure-dev-no-token", "serve", "--source", "kafka"])
        .args(["--brokers", &brokers, "--kafka-topic", TOPIC])
        .args(["--kafka-group", "attune-bench"])
        .env("ATTUNE_LOG", "warn");
    commands.push(util::display(&serve));
    runs.push(attune_from_kafka(
        serve,
        events,
        "Attune, from Kafka (consumer, pipeline, redb checkpoints with offsets)",
    )?);

    // The same with scale-out's exactly-once machinery (one instance): each checkpoint is also
    // a Kafka transaction with the state changelog, the model delta and the offsets, and the
    // model is merged back from the model topic.
    let mut scaled = Command::new(&origin);
    scaled
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(work.join("kafka-scaled"))
        .args(["--profile-key", "bench", "--listen", "127.0.0.1:0"])
        .args(["--insecure-dev-no-token", "serve", "--source", "kafka"])
        .args(["--brokers", &brokers, "--kafka-topic", TOPIC])
        .args(["--kafka-group", "attune-bench-scaled", "--kafka-scale-out"])
        .env("ATTUNE_LOG", "warn");
    commands.push(util::display(&scaled));
    runs.push(attune_from_kafka(
        scaled,
        events,
        "Attune scale-out, one instance (the above + a transaction per checkpoint: state changelog, model delta, offsets)",
    )?);

    let jar = provision::streams_app_jar();
    let lib = jar.with_file_name("lib");
    let mut streams = Command::new("java");
    streams
        .arg("-cp")
        .arg(format!("{}:{}/*", jar.display(), lib.display()))
        .arg("dev.attune.lab.streams.StreamsBench")
        .args(["--bootstrap", &brokers, "--events", &events.to_string()]);
    commands.push(util::display(&streams));
    let (out, cpu_s) = with_cpu_time(&streams)?;
    let measured = json_line(&out)?;
    if measured["processed"].as_u64() != Some(events) {
        bail!("the Streams app did not process {events} events: {measured}");
    }
    runs.push(Run {
        name: "Kafka Streams (1 thread, RocksDB, exactly_once_v2)",
        cpu_s,
        wall_s: measured["seconds"].as_f64().unwrap_or(f64::NAN),
    });
    // Freshness through Kafka: the publisher bench with the origin in Kafka mode.
    let secs = if quick { "3" } else { "15" };
    let mut fresh = util::cargo();
    fresh
        .args(["run", "--quiet", "--release", "-p", "attune-lab", "--"])
        .args(["bench-publish", "--rates", "100,1000", "--secs", secs])
        .args(["--kafka", &brokers]);
    commands.push(util::display(&fresh));
    let freshness = output(&mut fresh)?;
    drop(broker);
    // Paths relative to the repository, as the commands would be typed there.
    let root = format!("{}/", util::root().display());
    let commands = commands.iter().map(|c| c.replace(&root, "")).collect();
    Ok((
        commands,
        format!("{}\n{}", report(events, &runs), freshness.trim_end()),
    ))
}

/// Runs `serve` on the topic until its checkpoint holds every event; its CPU time is read from
/// `/proc` at that moment.
fn attune_from_kafka(serve: Command, events: u64, name: &'static str) -> Result<Run> {
    let mut origin = Service::spawn("attune-origin (kafka)", serve)?;
    let line = origin.wait_for_line(LISTENING, Duration::from_secs(60))?;
    let addr = line
        .trim()
        .strip_prefix(LISTENING)
        .and_then(|url| url.strip_prefix("http://"))
        .ok_or_else(|| anyhow!("unexpected line {line:?}"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    loop {
        origin.check()?;
        let status = status(&addr).unwrap_or(Value::Null);
        let applied = status["applied_offset"].as_u64().unwrap_or(0);
        if first.is_none() && applied > 0 {
            first = Some(Instant::now());
        }
        if status["received"].as_u64() == Some(events)
            && status["checkpointed_offset"].as_u64() >= Some(events)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("Attune did not apply {events} events from Kafka in time: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall_s = first.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    let cpu_s = proc_cpu_seconds(origin.id())?;
    let _ = origin.stop(Duration::from_secs(30));
    Ok(Run {
        name,
        cpu_s,
        wall_s,
    })
}

fn status(addr: &str) -> Option<Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    serde_json::from_str(raw.split("\r\n\r\n").nth(1)?).ok()
}

/// User + system seconds of a live process (all its threads).
fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {i}"))
    };
    // utime and stime are fields 14 and 15 (1-based, counting pid and comm).
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

fn clock_ticks() -> f64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs `cmd` under `bash` and returns its stdout and its CPU seconds (bash's `times`: the
/// children's user and system time).
fn with_cpu_time(cmd: &Command) -> Result<(String, f64)> {
    let mut bash = Command::new("bash");
    bash.args(["-c", "\"$@\" && times >&2", "bench"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    println!("$ {}", util::display(cmd));
    let out = bash
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", util::display(cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{stderr}",
            util::display(cmd),
            out.status
        );
    }
    let children = stderr
        .lines()
        .last()
        .ok_or_else(|| anyhow!("no `times` output"))?;
    let cpu: f64 = children
        .split_whitespace()
        .map(parse_times)
        .collect::<Result<Vec<f64>>>()?
        .iter()
        .sum();
    Ok((stdout, cpu))
}

/// `1m2.345s` → 62.345.
fn parse_times(s: &str) -> Result<f64> {
    let (m, rest) = s
        .split_once('m')
        .ok_or_else(|| anyhow!("unexpected `times` field {s:?}"))?;
    let secs = rest.trim_end_matches('s');
    Ok(m.parse::<f64>()? * 60.0 + secs.parse::<f64>()?)
}

fn output(cmd: &mut Command) -> Result<String> {
    println!("$ {}", util::display(cmd));
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", util::display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", util::display(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last line of `out` that is a JSON object.
fn json_line(out: &str) -> Result<Value> {
    let text = out.trim();
    // `replay` prints pretty JSON: try the whole output first.
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("no JSON in the output:\n{out}"))
}

fn report(events: u64, runs: &[Run]) -> String {
    let mut s = format!(
        "{events} schema-v1 events of 10,000 users over 5,000 items (`produce.py`), 4 partitions, \
         one broker on 127.0.0.1; each engine starts from empty state.\n\n\
         | engine | CPU s | events per CPU-second | wall s | events/s (wall) |\n|---|---|---|---|---|\n"
    );
    for r in runs {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.2} | {:.0} |\n",
            r.name,
            r.cpu_s,
            events as f64 / r.cpu_s,
            r.wall_s,
            events as f64 / r.wall_s
        ));
    }
    let find = |prefix: &str| runs.iter().find(|r| r.name.starts_with(prefix));
    if let (Some(kafka), Some(scaled), Some(streams)) = (
        find("Attune, from Kafka"),
        find("Attune scale-out"),
        find("Kafka Streams"),
    ) {
        s.push_str(&format!(
            "\nAttune from Kafka does {:.1}× the Kafka Streams app's events per CPU-second; with \
             scale-out's transactions (the same exactly-once guarantee as the Streams app's \
             `exactly_once_v2`, with a changelog), {:.1}×.\n",
            streams.cpu_s / kafka.cpu_s,
            streams.cpu_s / scaled.cpu_s
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_times_fields_parse() {
        assert_eq!(parse_times("0m0.120s").unwrap(), 0.12);
        assert_eq!(parse_times("1m2.500s").unwrap(), 62.5);
        assert!(parse_times("12.5").is_err());
    }

    #[test]
    fn a_json_line_is_found_after_other_output() {
        let v = json_line("noise\n{\"a\":1}\n").unwrap();
        assert_eq!(v["a"], 1);
        let pretty = json_line("{\n  \"b\": 2\n}\n").unwrap();
        assert_eq!(pretty["b"], 2);
    }

    #[test]
    fn paths_are_where_the_bench_expects_them() {
        assert!(util::root().join("lab/kafka/produce.py").is_file());
    }
}
