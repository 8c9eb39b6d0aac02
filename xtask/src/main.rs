//! Attune's task runner (the rust-analyzer `xtask` pattern).
//!
//! `cargo xtask <command>`; one module per command. Only `std`, `anyhow`, `flate2`, `ctrlc`,
//! `serde_json` and the std-only `attune-kafka-harness`: the runner must compile in seconds on a
//! fresh machine, before any tool is installed.

mod bench;
mod bench_edge;
mod bench_kafka;
mod bootstrap;
mod build_edge;
mod demo;
mod kafka;
mod reliability;
mod test;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
cargo xtask <command> [options]

commands:
  bootstrap [--browser] [--kafka]
                            install the toolchain this repository needs (idempotent; seconds when warm);
                            (librdkafka's Debian build deps included); --kafka adds the Kafka
                            broker's jars, the Kafka Streams comparison app and the Python client
  build-edge [--dev]        build the Worker into edge/build/ with worker-build (no downloads)
  test [options]            the full check suite: fmt, clippy, no_std, edge wasm, native, Kafka
                            broker and wasm tests
  demo [--keep-state] [--kafka]
                            run the local demo: origin + wrangler dev + the shop, fed with the sample
                            (--kafka: the origin on a local Kafka broker)
  bench [section…] [--quick] run the benchmarks and write BENCHMARKS.md
                            (sections: core wasm size pipeline publish edge kafka quality; default: all)
  reliability [--kills N] [--flips N] [--full-disks N]
                            the long reliability suite (the origin's ignored tests): SIGKILLs, bit
                            flips in the log and the store, full disks; prints a table of counts
                            (defaults: 100 kills, 100 flips of each, 5 full disks)
  kafka [--port N] [--dir D] [--partitions N] [--short-group-timeouts]
                            run a local Apache Kafka broker (KRaft) on 127.0.0.1 until Ctrl-C

test options:
  --fail-fast               stop at the first failing step (default: run every step, then report)
  --only a,b                run only these steps
  --skip a,b                skip these steps
  --no-browser              do not try to install chromium for the browser end-to-end tests
  steps: bootstrap fmt clippy clippy-wasm no-std edge-wasm test wasm-test
";

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        print!("{USAGE}");
        return Ok(());
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "bootstrap" => bootstrap::cmd(&rest),
        "build-edge" => build_edge::cmd(&rest),
        "test" => test::cmd(&rest),
        "demo" => demo::cmd(&rest),
        "bench" => bench::cmd(&rest),
        "kafka" => kafka::cmd(&rest),
        "reliability" => reliability::cmd(&rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
