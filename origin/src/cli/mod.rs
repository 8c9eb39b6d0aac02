//! The command line: clap definitions and the commands. Config precedence: embedded
//! defaults < TOML file (`--config`, `ATTUNE_CONFIG`, or `./attune.toml` when present) <
//! environment < flags.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::{Client, chunk_lines};
use crate::config::{Config, TargetKind};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::publish::{Publisher, Target};

#[derive(Debug, Parser)]
#[command(name = "attune-origin", version, about = "Attune origin service")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Overrides of the config file, each with an environment variable.
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// TOML config file.
    #[arg(long, global = true, env = "ATTUNE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, log); default `./.attune`.
    #[arg(long, global = true, env = "ATTUNE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address for `serve` (`127.0.0.1:0` picks a port).
    #[arg(long, global = true, env = "ATTUNE_LISTEN")]
    pub listen: Option<String>,
    /// Bearer token for `/v1/*` (server) and for `--url` clients.
    #[arg(
        long,
        global = true,
        env = "ATTUNE_INGEST_TOKEN",
        hide_env_values = true
    )]
    pub ingest_token: Option<String>,
    /// Development only: `serve` without an ingest token, on a loopback `--listen` address
    /// alone (`serve` refuses to start without a token otherwise, and always refuses an empty
    /// one).
    #[arg(long, global = true, env = "ATTUNE_INSECURE_DEV_NO_TOKEN")]
    pub insecure_dev_no_token: bool,
    /// Keyed-hash secret for `p:` keys (the worker's ATTUNE_PROFILE_KEY).
    #[arg(
        long,
        global = true,
        env = "ATTUNE_PROFILE_KEY",
        hide_env_values = true
    )]
    pub profile_key: Option<String>,
    /// KV target: the worker's dev bulk route, e.g. http://127.0.0.1:8787/__attune/kv.
    #[arg(long, global = true, env = "ATTUNE_KV_URL")]
    pub kv_url: Option<String>,
    /// Bearer token for --kv-url (the worker's ATTUNE_DEV_KV_TOKEN).
    #[arg(
        long,
        global = true,
        env = "ATTUNE_DEV_KV_TOKEN",
        hide_env_values = true
    )]
    pub kv_token: Option<String>,
    /// KV target: a directory (one file per key) for inspection.
    #[arg(long, global = true, env = "ATTUNE_KV_DIR")]
    pub kv_dir: Option<PathBuf>,
    /// Rules published under `cfg` (segments, variants, experiments): a JSON file.
    #[arg(long, global = true, env = "ATTUNE_RULES")]
    pub rules: Option<PathBuf>,
    /// KV target: Cloudflare's REST bulk API, this account (with --cloudflare-namespace-id;
    /// --kv-url wins over both when set).
    #[arg(long, global = true, env = "CLOUDFLARE_ACCOUNT_ID")]
    pub cloudflare_account_id: Option<String>,
    /// The Workers KV namespace the Worker reads (its ATTUNE_KV binding).
    #[arg(long, global = true, env = "CLOUDFLARE_KV_NAMESPACE_ID")]
    pub cloudflare_namespace_id: Option<String>,
    /// API token with Workers KV Storage write permission; `serve` refuses the Cloudflare
    /// target without one.
    #[arg(
        long,
        global = true,
        env = "CLOUDFLARE_API_TOKEN",
        hide_env_values = true
    )]
    pub cloudflare_api_token: Option<String>,
    /// Let `serve` publish to a Cloudflare target without a token or with the built-in dev
    /// profile key (only for a local stand-in of the API).
    #[arg(long, global = true, env = "ATTUNE_ALLOW_DEV_SECRETS")]
    pub allow_dev_secrets: bool,
    /// JSON logs.
    #[arg(long, global = true, env = "ATTUNE_LOG_JSON")]
    pub log_json: bool,
    /// Kafka `bootstrap.servers` (with `serve --source kafka`, or `source = "kafka"`).
    #[arg(long, global = true, env = "ATTUNE_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// The events topic [attune.events].
    #[arg(long, global = true, env = "ATTUNE_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// The dead-letter topic [attune.events.dlq].
    #[arg(long, global = true, env = "ATTUNE_KAFKA_DLQ_TOPIC")]
    pub kafka_dlq_topic: Option<String>,
    /// The consumer group [attune-origin].
    #[arg(long, global = true, env = "ATTUNE_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Several origins share the consumer group, each owning some partitions (state in
    /// [kafka] state_topic, model deltas in model_topic; see the README).
    #[arg(long, global = true, env = "ATTUNE_KAFKA_SCALE_OUT")]
    pub kafka_scale_out: bool,
    /// A librdkafka setting, `name=value` (repeatable), e.g. `security.protocol=SASL_SSL`;
    /// secrets are better kept in the TOML file's [kafka.settings].
    #[arg(long = "kafka-setting", global = true, value_name = "NAME=VALUE")]
    pub kafka_settings: Vec<String>,
}

/// The publish settings, for `serve --help` (the README has the same table).
const SERVE_PUBLISH_HELP: &str = "\
Publish settings ([publish] in the TOML file; defaults in brackets):
  target                  auto | none | http | cloudflare | dir [auto: url, then the Cloudflare
                          ids, then dir; --kv-url wins over the Cloudflare ids, which win over --kv-dir]
  url, token              http target base URL (--kv-url) and bearer token (--kv-token)
  cloudflare_account_id, cloudflare_namespace_id, token
                          Cloudflare target (--cloudflare-*, CLOUDFLARE_*)
  cloudflare_api          API base URL [https://api.cloudflare.com/client/v4]
  dir                     directory target (--kv-dir)
  flush_interval_ms       at most one flush per interval: the latency target [1000]
  shared_interval_ms      t, n:, c:, cfg, m rewritten at most this often, only when changed
                          [60000 on Cloudflare, else flush_interval_ms]
  min_key_interval_ms     one write or delete per key per interval, across restarts [1000]
  budget_requests, budget_window_ms, budget_burst
                          KV API request budget [1000 per 300000 ms, burst 50; Cloudflare
                          allows 1,200 per 5 min per user token]
  max_pairs, max_request_bytes   bulk request limits [10000, 100000000]
  request_timeout_ms, backoff_base_ms, backoff_max_ms   [10000, 200, 30000]
  allow_dev_secrets       Cloudflare target without a token or with the dev profile key
                          (--allow-dev-secrets) [false]";

/// `serve`'s own options (`--source` is not global: `replay` has a `--source` of its own, the
/// watermark source's name).
#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    /// Where events come from: the embedded log, or a Kafka topic ([kafka] in the TOML file;
    /// other commands read `source` there).
    #[arg(long, env = "ATTUNE_SOURCE", value_enum)]
    pub source: Option<crate::config::SourceKind>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest + pipeline + publisher + metrics.
    #[command(after_long_help = SERVE_PUBLISH_HELP)]
    Serve(ServeArgs),
    /// Feed a JSONL event file.
    Replay(ReplayArgs),
    /// Show stored state.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Privacy delete.
    #[command(subcommand)]
    Forget(Forget),
    /// Publish to KV.
    Publish(PublishArgs),
    /// Recreate the store from the event log (with the service stopped).
    ///
    /// The old file is moved aside (`store.redb.replaced-<ms>`), the log is replayed from its
    /// first record and checkpointed. The catalog and forgets come back from the log. For a
    /// damaged store (the service rebuilds one it finds damaged at start by itself) or one in
    /// doubt. When retention has retired the log's first segments it refuses unless
    /// `--accept-retired` says that losing what they held is accepted; the output then says
    /// `"complete": false` and the offset the replay started from.
    Rebuild(RebuildArgs),
    /// Copy every valid record of a damaged event log into a new one (the node must be
    /// stopped). Each damaged range becomes a gap record of the same length, so the store's
    /// checkpoint still points at the same records; the damaged file is kept next to it.
    Salvage,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Rebuild even though retention retired the log's first segments: profiles, model
    /// counts and catalog changes from their records are not restored.
    #[arg(long)]
    pub accept_retired: bool,
}

#[derive(Debug, Args)]
pub struct Remote {
    /// A running server (`http://127.0.0.1:7878`); without it the data directory is opened.
    #[arg(long, env = "ATTUNE_URL")]
    pub url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub remote: Remote,
    /// Events per request / log append.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Watermark source name.
    #[arg(long, default_value = "replay")]
    pub source: String,
}

#[derive(Debug, Subcommand)]
pub enum Inspect {
    User {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    Dlq {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Counters, offsets, outbox size.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum Forget {
    User {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Republish every profile and shared key.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// Builds the effective config.
pub fn load_config(g: &Global) -> Result<Config> {
    let mut cfg = match &g.config {
        Some(p) => Config::from_file(p)?,
        None if std::path::Path::new("attune.toml").exists() => {
            Config::from_file(std::path::Path::new("attune.toml"))?
        }
        None => Config::default(),
    };
    if let Some(v) = &g.data_dir {
        cfg.data_dir = v.clone();
    }
    if let Some(v) = &g.rules {
        cfg.rules_file = Some(v.clone());
    }
    if let Some(v) = &g.listen {
        cfg.listen = v.clone();
    }
    if let Some(v) = &g.ingest_token {
        cfg.ingest_token = Some(v.clone());
    }
    if g.insecure_dev_no_token {
        cfg.insecure_dev_no_token = true;
    }
    if let Some(v) = &g.profile_key {
        cfg.profile_key = v.clone();
    }
    // Every target setting given is kept, so the start-up log can name the ones the chosen
    // target overrode; the choice: --kv-url, then the Cloudflare ids, then --kv-dir.
    if let Some(a) = &g.cloudflare_account_id {
        cfg.publish.cloudflare_account_id = Some(a.clone());
    }
    if let Some(n) = &g.cloudflare_namespace_id {
        cfg.publish.cloudflare_namespace_id = Some(n.clone());
    }
    if let Some(d) = &g.kv_dir {
        cfg.publish.dir = Some(d.clone());
    }
    if let Some(v) = &g.kv_url {
        cfg.publish.url = Some(v.clone());
        cfg.publish.target = TargetKind::Http;
        if let Some(t) = &g.kv_token {
            cfg.publish.token = Some(t.clone());
        }
    } else if g.cloudflare_account_id.is_some() && g.cloudflare_namespace_id.is_some() {
        cfg.publish.token = g.cloudflare_api_token.clone().or(cfg.publish.token);
        cfg.publish.target = TargetKind::Cloudflare;
    } else if g.kv_dir.is_some() {
        cfg.publish.target = TargetKind::Dir;
    }
    if g.log_json {
        cfg.log_json = true;
    }
    if g.allow_dev_secrets {
        cfg.publish.allow_dev_secrets = true;
    }
    apply_kafka_flags(g, &mut cfg)?;
    cfg.load_rules()?;
    cfg.validate()?;
    Ok(cfg)
}

fn apply_kafka_flags(g: &Global, cfg: &mut Config) -> Result<()> {
    let k = &mut cfg.kafka;
    for (flag, field) in [
        (&g.brokers, &mut k.brokers),
        (&g.kafka_topic, &mut k.topic),
        (&g.kafka_dlq_topic, &mut k.dlq_topic),
        (&g.kafka_group, &mut k.group_id),
    ] {
        if let Some(v) = flag {
            field.clone_from(v);
        }
    }
    for setting in &g.kafka_settings {
        let Some((name, value)) = setting.split_once('=') else {
            return Err(crate::Error::Config(format!(
                "--kafka-setting {setting:?}: expected NAME=VALUE"
            )));
        };
        k.settings.insert(name.trim().into(), value.into());
    }
    k.scale_out |= g.kafka_scale_out;
    Ok(())
}

/// Prints a command's result to stdout, pretty.
pub fn print_json(v: &serde_json::Value) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

/// Runs a command (the binary's whole `main`, minus logging setup).
pub async fn run(cli: Cli) -> Result<()> {
    let cfg = load_config(&cli.global)?;
    let token = cfg.ingest_token.clone();
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = cfg;
            if let Some(source) = args.source {
                cfg.source = source;
                cfg.validate()?;
            }
            let running = crate::server::start(cfg).await?;
            println!("attune-origin listening on http://{}", running.addr);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            running.serve_until_signal().await
        }
        Command::Replay(a) => replay(cfg, a, token).await,
        Command::Salvage => {
            let report = crate::log::salvage(&cfg.log_dir())?;
            print_json(&json!(report));
            Ok(())
        }
        Command::Inspect(Inspect::User { id, remote }) => {
            if let Some(url) = remote.url {
                let v = Client::new(&url, token)?
                    .get(&format!("/v1/users/{id}"))
                    .await?;
                print_json(&v);
            } else {
                let node = Node::open(&cfg)?;
                match node.inspect_user_json(&id)? {
                    Some(v) => print_json(&v),
                    None => return Err(Error::NoSuchUser(id)),
                }
            }
            Ok(())
        }
        Command::Inspect(Inspect::Dlq { limit, remote }) => {
            if let Some(url) = remote.url {
                let v = Client::new(&url, token)?
                    .get(&format!("/v1/dlq?limit={limit}"))
                    .await?;
                print_json(&v);
            } else {
                let node = Node::open(&cfg)?;
                let records = node.store.dlq(limit)?;
                print_json(&json!({ "total": node.store.dlq_len()?, "records": records }));
            }
            Ok(())
        }
        Command::Inspect(Inspect::Status { remote }) => {
            if let Some(url) = remote.url {
                print_json(&Client::new(&url, token)?.get("/v1/status").await?);
            } else {
                let node = Node::open(&cfg)?;
                let off = node
                    .store
                    .meta(&crate::store::keys::offset(&node.source_name()))?;
                let mut status = node.status_json(off);
                if let (Some(s), serde_json::Value::Object(p)) = (
                    status.as_object_mut(),
                    crate::publish::status_json(&node.store),
                ) {
                    s.extend(p);
                }
                print_json(&status);
            }
            Ok(())
        }
        Command::Forget(Forget::User { id, remote }) => {
            if let Some(url) = remote.url {
                print_json(
                    &Client::new(&url, token)?
                        .delete(&format!("/v1/users/{id}"))
                        .await?,
                );
            } else {
                let node = Node::open(&cfg)?;
                let existed = node.forget(&id)?;
                // The forget is a log record: apply it (and what precedes it) now. In Kafka
                // mode it is a record in the topic, which the serving origin applies.
                if node.kafka.is_none() {
                    node.drain()?;
                    flush_offline(&node).await?;
                }
                print_json(&json!({ "forgotten": existed }));
            }
            Ok(())
        }
        Command::Rebuild(a) => {
            let (store, moved_aside) =
                crate::store::rebuild(&cfg.store_path(), &cfg.log_dir(), a.accept_retired)?;
            // redb opens a file once per process: the node below opens it again.
            drop(store);
            let node = Node::open(&cfg)?;
            let o = node.drain()?;
            let start = node.log.start();
            print_json(&json!({
                "store": cfg.store_path(), "moved_aside": moved_aside,
                "complete": start == crate::log::FIRST_OFFSET,
                "replayed_from_offset": start,
                "received": o.received, "applied": o.applied, "duplicates": o.duplicates,
                "dlq": o.dlq, "late": o.late,
            }));
            Ok(())
        }
        Command::Publish(a) => {
            if let Some(url) = a.remote.url {
                let path = if a.full {
                    "/v1/publish/full"
                } else {
                    "/v1/status"
                };
                print_json(&Client::new(&url, token)?.post(path).await?);
            } else {
                let node = Node::open(&cfg)?;
                if a.full {
                    node.enqueue_full()?;
                }
                let n = flush_offline(&node).await?;
                print_json(&json!({ "written": n }));
            }
            Ok(())
        }
    }
}

/// Publishes the whole outbox from an offline command (ignores the per-key interval wait by
/// looping until nothing is deferred).
pub async fn flush_offline(node: &Node) -> Result<usize> {
    let target = Target::from_config(&node.cfg)?;
    if target.is_none() {
        return Ok(0);
    }
    let mut p = Publisher::new(node, target);
    let mut written = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        p.publish_shared_now();
        let o = p.flush(Some(deadline)).await?;
        written += o.written + o.deleted;
        if o.deferred == 0 {
            return Ok(written);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Feeds JSONL lines to a server or to the local data directory, `batch` events per request
/// or log append.
pub async fn feed(
    cfg: &Config,
    url: Option<&str>,
    token: Option<String>,
    source: &str,
    lines: Vec<Vec<u8>>,
    batch: usize,
) -> Result<serde_json::Value> {
    let pb = progress_bar(lines.len() as u64);
    let bodies = chunk_lines(&lines, batch.max(1));
    if let Some(url) = url {
        let client = Client::new(url, token)?;
        for body in bodies {
            let n = body.iter().filter(|b| **b == b'\n').count() as u64;
            client.post_events(source, body).await?;
            pb.inc(n);
        }
        pb.finish_and_clear();
        return Ok(json!({ "sent": lines.len(), "to": url }));
    }
    // Offline, events go into the embedded log; a Kafka-mode origin never reads it, so they
    // would sit there unapplied. Refused before anything is written.
    if cfg.source == crate::config::SourceKind::Kafka {
        return Err(Error::NeedsEmbeddedLog(
            "feeding events without --url (send them to the serving origin)",
        ));
    }
    let node = Node::open(cfg)?;
    for body in bodies {
        let payloads: Vec<Vec<u8>> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let n = payloads.len() as u64;
        node.log
            .append_blocking(crate::now_ms(), source, payloads)?;
        pb.inc(n);
    }
    pb.finish_and_clear();
    let o = node.drain()?;
    let written = flush_offline(&node).await?;
    Ok(json!({
        "received": o.received, "applied": o.applied, "duplicates": o.duplicates,
        "dlq": o.dlq, "late": o.late, "published": written,
    }))
}

async fn replay(cfg: Config, a: ReplayArgs, token: Option<String>) -> Result<()> {
    let text = std::fs::read(&a.file)?;
    let lines: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let fed = feed(
        &cfg,
        a.remote.url.as_deref(),
        token,
        &a.source,
        lines,
        a.batch,
    )
    .await?;
    print_json(&fed);
    Ok(())
}

#[cfg(test)]
mod tests;
