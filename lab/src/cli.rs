//! The command line: `import-retail`, `eval` and `bench`. Global options (data directory,
//! tokens, KV target) are the origin's, with the same flags and environment variables.

use std::path::PathBuf;

use crate::error::Result;
use attune_origin::Config;
use attune_origin::cli::{Global, Remote, feed, load_config, print_json};
use attune_origin::client::Client;
use attune_origin::node::Node;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "attune-lab",
    version,
    about = "Attune sample tooling: import, evaluation, benchmark"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn the Online Retail CSV into events and a catalog, and load them.
    ImportRetail(ImportArgs),
    /// Offline ranking quality on the Online Retail sample (time-split or leave-last-out).
    Eval(EvalArgs),
    /// Pipeline throughput, freshness and memory benchmark.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub csv: PathBuf,
    #[command(flatten)]
    pub remote: Remote,
    /// Keep the original 2010 timestamps.
    #[arg(long)]
    pub no_shift: bool,
    /// Also emit a `view` (props {"derived": true}) before each purchase.
    #[arg(long)]
    pub derive_views: bool,
    /// Catalog of every item instead of the demo shop's product pages.
    #[arg(long)]
    pub full_catalog: bool,
    /// Write the events as JSONL here instead of loading them.
    #[arg(long)]
    pub events_out: Option<PathBuf>,
    /// Write the catalog as JSON here instead of loading it.
    #[arg(long)]
    pub catalog_out: Option<PathBuf>,
    /// Watermark source name.
    #[arg(long, default_value = "import")]
    pub source: String,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long, default_value = "data/online-retail/online_retail_sample.csv")]
    pub csv: PathBuf,
    #[arg(long, value_enum, default_value = "time-split")]
    pub protocol: crate::eval::Protocol,
    /// Test on the last 20% of the training period instead (where parameters are chosen).
    #[arg(long)]
    pub validation: bool,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
    /// Ranking parameters as JSON (`RankParams` fields; the rest keep their defaults).
    #[arg(long)]
    pub rank_params: Option<String>,
    /// Model parameters as JSON (`ModelConfig` fields; the rest keep their defaults).
    #[arg(long)]
    pub model_config: Option<String>,
}

/// Runs a command (the binary's whole `main`, minus logging setup).
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::ImportRetail(a) => {
            let cfg = load_config(&cli.global)?;
            let token = cfg.ingest_token.clone();
            import_retail(cfg, a, token).await
        }
        Command::Eval(a) => {
            let mut opts = crate::eval::Options {
                protocol: a.protocol,
                validation: a.validation,
                ..crate::eval::Options::default()
            };
            if let Some(json) = &a.rank_params {
                opts.rank = serde_json::from_str(json)?;
            }
            if let Some(json) = &a.model_config {
                opts.model = crate::eval::eval_model_config(serde_json::from_str(json)?);
            }
            let report = crate::eval::run(&a.csv, &opts)?;
            if a.json {
                print_json(&serde_json::to_value(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Bench(a) => crate::bench::run(a).await,
    }
}

async fn import_retail(cfg: Config, a: ImportArgs, token: Option<String>) -> Result<()> {
    let ds = crate::import::load_retail(&a.csv)?;
    let imp = crate::import::from_retail(
        &ds,
        attune_origin::now_ms(),
        !a.no_shift,
        a.derive_views,
        a.full_catalog,
    );
    let lines: Vec<Vec<u8>> = imp
        .events
        .iter()
        .map(|e| e.to_json().into_bytes())
        .collect();
    let mut wrote_file = false;
    if let Some(out) = &a.events_out {
        let mut text = Vec::new();
        for l in &lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        std::fs::write(out, text)?;
        wrote_file = true;
    }
    if let Some(out) = &a.catalog_out {
        std::fs::write(out, serde_json::to_vec_pretty(&imp.catalog)?)?;
        wrote_file = true;
    }
    let summary = json!({
        "events": lines.len(),
        "catalog_items": imp.catalog.len(),
        "cancelled_invoices_skipped": imp.cancelled_invoices,
        "shift_ms": imp.shift_ms,
    });
    if wrote_file {
        print_json(&summary);
        return Ok(());
    }
    // Catalog first, so events get their categories.
    if let Some(url) = &a.remote.url {
        Client::new(url, token.clone())?
            .put_catalog(&imp.catalog)
            .await?;
    } else {
        Node::open(&cfg)?.put_catalog(imp.catalog.clone())?;
    }
    let fed = feed(&cfg, a.remote.url.as_deref(), token, &a.source, lines, 1000).await?;
    print_json(&json!({ "import": summary, "load": fed }));
    Ok(())
}
