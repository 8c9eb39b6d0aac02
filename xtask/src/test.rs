//! `cargo xtask test`: the README's test command and the whole of CI (`.ci/run` calls it).
//!
//! Steps, in order (each streams its tool's own output, then reports its duration):
//! bootstrap, fmt, clippy (native, whole workspace), clippy-wasm (the edge for
//! wasm32-unknown-unknown, where its Worker dependencies live), no-std (`attune-core` without
//! default features, and the `encoding_rs` stand-in, for wasm32v1-none), edge-wasm (the release Worker build), test (native unit,
//! integration and end-to-end tests), kafka (the origin on a real Apache Kafka broker, and
//! the origin built without its `kafka` feature), wasm-test (`attune-core`'s tests under node).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::bootstrap;
use crate::build_edge;
use crate::util::{self, fmt_duration};

const STEPS: &[&str] = &[
    "bootstrap",
    "fmt",
    "clippy",
    "clippy-wasm",
    "no-std",
    "edge-wasm",
    "test",
    "kafka",
    "wasm-test",
];

#[derive(Debug, Default)]
struct Options {
    fail_fast: bool,
    browser: bool,
    only: Vec<String>,
    skip: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        browser: true,
        ..Options::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut list = |flag: &str| -> Result<Vec<String>> {
            let Some(value) = args.next() else {
                bail!("{flag} needs a comma-separated list of steps");
            };
            let steps = util::split_list(value);
            if let Some(bad) = steps.iter().find(|s| !STEPS.contains(&s.as_str())) {
                bail!("unknown step `{bad}` (steps: {})", STEPS.join(" "));
            }
            Ok(steps)
        };
        match arg.as_str() {
            "--fail-fast" => opts.fail_fast = true,
            "--no-browser" => opts.browser = false,
            "--only" => opts.only = list("--only")?,
            "--skip" => opts.skip = list("--skip")?,
            other => bail!("test: unknown option `{other}` (see `cargo xtask help`)"),
        }
    }
    Ok(opts)
}

pub fn cmd(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let selected = |name: &str| {
        (opts.only.is_empty() || opts.only.iter().any(|s| s == name))
            && !opts.skip.iter().any(|s| s == name)
    };
    let planned: Vec<&str> = STEPS.iter().copied().filter(|s| selected(s)).collect();
    let started = Instant::now();
    let mut results: Vec<(&str, Result<()>, Duration)> = Vec::new();

    for (i, &name) in planned.iter().enumerate() {
        println!();
        println!(
            "==== [{}/{}] {name}: {} ====",
            i + 1,
            planned.len(),
            describe(name)
        );
        let t = Instant::now();
        let result = run_step(name, &opts);
        let elapsed = t.elapsed();
        match &result {
            Ok(()) => println!("==== {name}: ok in {} ====", fmt_duration(elapsed)),
            Err(err) => println!(
                "==== {name}: FAILED in {}: {err:#} ====",
                fmt_duration(elapsed)
            ),
        }
        let failed = result.is_err();
        results.push((name, result, elapsed));
        // Nothing else can run without the tools.
        if failed && (opts.fail_fast || name == "bootstrap") {
            break;
        }
    }

    println!();
    println!("==== summary ====");
    for &name in &planned {
        match results.iter().find(|(n, _, _)| *n == name) {
            Some((_, Ok(()), d)) => println!("  {name:<12} ok       {:>8}", fmt_duration(*d)),
            Some((_, Err(_), d)) => println!("  {name:<12} FAILED   {:>8}", fmt_duration(*d)),
            None => println!("  {name:<12} not run"),
        }
    }
    println!(
        "  {:<12} {:<8} {:>8}",
        "total",
        "",
        fmt_duration(started.elapsed())
    );

    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r, _)| r.is_err())
        .map(|(n, _, _)| *n)
        .collect();
    if !failed.is_empty() {
        bail!("{} step(s) failed: {}", failed.len(), failed.join(", "));
    }
    if results.len() < planned.len() {
        bail!("not every step ran");
    }
    println!("all {} steps passed", planned.len());
    Ok(())
}

fn describe(name: &str) -> &'static str {
    match name {
        "bootstrap" => "install or verify the toolchain",
        "fmt" => "cargo fmt --all --check",
        "clippy" => "cargo clippy --workspace --all-targets -- -D warnings",
        "clippy-wasm" => {
            "cargo clippy -p attune-edge --all-targets --target wasm32-unknown-unknown -- -D warnings"
        }
        "no-std" => {
            "cargo build -p attune-core -p encoding_rs --no-default-features --target wasm32v1-none"
        }
        "edge-wasm" => "cargo xtask build-edge (release Worker build)",
        "test" => "cargo test --workspace (unit, integration, end to end)",
        "kafka" => "the broker tests (origin, lab) and the embedded-only origin build",
        "wasm-test" => "cargo test -p attune-core --target wasm32-unknown-unknown (node)",
        _ => "",
    }
}

fn run_step(name: &str, opts: &Options) -> Result<()> {
    match name {
        "bootstrap" => bootstrap::ensure(bootstrap::Options {
            browser: opts.browser,
            quiet: false,
        }),
        "fmt" => util::run(util::cargo().args(["fmt", "--all", "--check"])),
        "clippy" => util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
        "clippy-wasm" => util::run(wasm_bindgen_env(util::cargo()).args([
            "clippy",
            "-p",
            "attune-edge",
            "--all-targets",
            "--target",
            "wasm32-unknown-unknown",
            "--",
            "-D",
            "warnings",
        ])),
        "no-std" => util::run(util::cargo().args([
            "build",
            "-p",
            "attune-core",
            // patches/encoding_rs_utf8, which lol_html links instead of encoding_rs.
            "-p",
            "encoding_rs",
            "--no-default-features",
            "--target",
            "wasm32v1-none",
        ])),
        "edge-wasm" => build_edge::build(
            build_edge::Profile::Release,
            &util::root().join("edge"),
            false,
        ),
        "test" => util::run(util::cargo().args(["test", "--workspace"])),
        "kafka" => kafka_tests(),
        "wasm-test" => util::run(
            util::cargo()
                .env(
                    "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                    "wasm-bindgen-test-runner",
                )
                // `--tests`: unit and integration tests. Doctests are native-only (they are
                // examples, not wasm-bindgen tests), and run in the `test` step.
                .args([
                    "test",
                    "-p",
                    "attune-core",
                    "--target",
                    "wasm32-unknown-unknown",
                    "--tests",
                ]),
        ),
        other => bail!("unknown step `{other}`"),
    }
}

/// worker-build compiles with `WASM_BINDGEN_USE_JS_SYS=1` (read by wasm-bindgen's proc macro);
/// lint the edge the same way so clippy sees the code that ships.
fn wasm_bindgen_env(mut cmd: Command) -> Command {
    cmd.env("WASM_BINDGEN_USE_JS_SYS", "1");
    cmd
}

/// The tests that start a real broker (`#[ignore]`d in a plain `cargo test`): the broker's jars
/// and the Python client are provisioned first (each skipped when present), then each test
/// binary runs alone, one broker at a time on the shared cores.
fn kafka_tests() -> Result<()> {
    use attune_kafka_harness::provision;
    provision::broker_jars()?;
    provision::python_client()?;
    // `--workspace`: the `test` step's feature resolution, so nothing is compiled again.
    util::run(util::cargo().args([
        "test",
        "--workspace",
        "--test",
        "kafka",
        "--test",
        "kafka_sample",
        "--test",
        "kafka_scale",
        "--",
        "--ignored",
        "--test-threads",
        "1",
    ]))?;
    util::run(util::cargo().args([
        "check",
        "-p",
        "attune-origin",
        "--no-default-features",
        "--all-targets",
    ]))
}
