//! Configuration: embedded defaults, then a TOML file, then environment and flags (the CLI
//! merges those last two through clap).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const HOUR_MS: u64 = 3_600_000;
const MINUTE_MS: u64 = 60_000;

/// The built-in profile key: public, so anyone can compute the `p:` keys with it.
pub const DEV_PROFILE_KEY: &str = "attune-dev-profile-key";

/// The whole service configuration. Every field has an embedded default, so
/// `attune-origin serve` with no file runs a single-machine setup with data in `./.attune/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Store, event log and (by default) the directory target live here.
    pub data_dir: PathBuf,
    /// Ingest/admin HTTP listen address (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Bearer token for `/v1/*` (events, catalog, users, DLQ, publish). `serve` refuses an
    /// empty one, and refuses to run without one unless `insecure_dev_no_token` is set and
    /// `listen` is a loopback address ([`Config::check_serve_auth`]).
    pub ingest_token: Option<String>,
    /// Development only: serve `/v1/*` without a token, allowed on a loopback address alone.
    pub insecure_dev_no_token: bool,
    /// Secret of the keyed profile hash (`p:<hash>`); must equal the worker's `ATTUNE_PROFILE_KEY`.
    pub profile_key: String,
    /// JSON logs instead of human-readable ones.
    pub log_json: bool,
    /// Deadline for draining and flushing on SIGTERM/Ctrl-C.
    pub shutdown_deadline_ms: u64,
    /// After the pipeline stops on an error, how long `serve` keeps answering (health 503 with
    /// the reason, ingest 503) before it exits non-zero for its supervisor to restart it.
    pub failure_exit_delay_ms: u64,
    pub ingest: IngestConfig,
    pub pipeline: PipelineConfig,
    pub model: ModelConfig,
    pub publish: PublishConfig,
    pub log: LogConfig,
    /// Where events come from: the embedded log (default) or a Kafka topic.
    pub source: SourceKind,
    pub kafka: KafkaConfig,
    /// JSON file with the segment, variant and experiment rules published under `cfg`
    /// (`attune_core::rules::Config`). Absent: the built-in defaults.
    pub rules_file: Option<PathBuf>,
    /// The rules themselves, read from `rules_file` by [`Config::load_rules`].
    #[serde(skip)]
    pub rules: attune_core::rules::Config,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Pending append requests before ingest answers 429.
    pub queue_capacity: usize,
    /// Log bytes not yet applied before ingest answers 429 (backpressure).
    pub max_lag_bytes: u64,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most log records applied in one store transaction (the pipeline sizes batches below
    /// this so one takes about 300 ms).
    pub batch_max: usize,
    /// User states the pipeline keeps decoded in memory between batches (least recently
    /// used evicted); a miss reads the store.
    pub profile_cache: usize,
    /// Longest time between checkpoints while events keep arriving (the pipeline also
    /// checkpoints whenever it catches up with the log). A crash replays at most this much of
    /// the log; 0 checkpoints after every micro-batch.
    pub checkpoint_interval_ms: u64,
    /// Changed users that trigger a checkpoint before the interval is up (they stay in memory
    /// until then; keep it below `profile_cache`).
    pub checkpoint_max_unsaved: usize,
    /// How long an `event_id` is remembered (event time, behind the watermark).
    pub dedup_horizon_ms: u64,
    /// Events older than the source's watermark minus this go to the DLQ as `late`.
    pub allowed_lateness_ms: u64,
    /// How long a dead letter is kept (by the time ingest accepted it); checkpoints delete
    /// older ones. Default 7 days.
    pub dlq_retention_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Neighbours kept per item.
    pub top_k: usize,
    /// Distinct recent items of the user's current session that a new item co-occurs with; the
    /// `d`-th most recent adds `1/d` of a co-occurrence, so a wider window reaches further
    /// without drowning what was seen next to each other.
    pub history: usize,
    /// Inactivity that ends a session for co-occurrence: an item co-occurs only with the items
    /// of the same visit (a basket, a browsing session), not with last month's.
    pub session_gap_ms: u64,
    /// Exponent of the item's own count in the neighbour similarity
    /// `count(i, j) / (count(i)^a · count(j)^(1-a))` (asymmetric cosine, Aiolli 2013): `0.5` is
    /// the cosine; higher values penalize popular neighbours less, so a neighbour list reads
    /// closer to "bought with this" than to "bought only with this".
    pub similarity_alpha: f64,
    /// Shrinkage of the neighbour similarity towards 0 by its support: the similarity is scaled
    /// by `n / (n + shrinkage)`, `n` the pair's co-occurrence weight (1 for two items seen next
    /// to each other once), so a pair seen together once in a rare item's only basket does not
    /// read as certain.
    pub similarity_shrinkage: f64,
    /// Number of `c:`/`n:` shards.
    pub shards: u32,
    pub trend_half_life_ms: u64,
    /// Entries in `Trending.items`.
    pub trending_len: usize,
    /// Entries per category in `Trending.by_category`.
    pub per_category: usize,
}

/// The pipeline's source of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The embedded durable log in `data_dir` (no broker).
    #[default]
    Log,
    /// A Kafka topic (`[kafka]`): ingest produces to it, the pipeline consumes it.
    Kafka,
}

/// Kafka mode (`source = "kafka"`). The topic's schema and keys are in the README.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `broker1:9092,broker2:9092`.
    pub brokers: String,
    /// Events, forgets and catalog changes, keyed by user.
    pub topic: String,
    /// Dead letters (the reason in the `attune-reason` header).
    pub dlq_topic: String,
    /// The consumer group (one origin per group unless `scale_out`: see the README).
    pub group_id: String,
    /// Several origins share the group, each owning some partitions: their state goes to
    /// `state_topic` and their model deltas to `model_topic`, in one Kafka transaction per
    /// checkpoint with the consumed offsets.
    pub scale_out: bool,
    /// The compacted state changelog (scale-out), one partition per events partition.
    pub state_topic: String,
    /// Every instance's model deltas (scale-out), one partition, kept forever: an instance
    /// that joins reads it from the start.
    pub model_topic: String,
    /// `transaction.timeout.ms` (scale-out): how long a crashed instance's open transaction
    /// holds back its partitions' takeover.
    pub transaction_timeout_ms: u64,
    /// `group.instance.id` (static membership: a restarted origin gets its partitions back at
    /// once). Default: derived from `data_dir`.
    pub instance_id: Option<String>,
    /// Partitions of the topics when the origin creates them (an existing topic is kept).
    pub partitions: u32,
    /// Replication factor of the topics the origin creates.
    pub replication: u16,
    /// How long ingest waits for the broker's acknowledgement before answering 503.
    pub produce_timeout_ms: u64,
    /// Passed to librdkafka as they are (both producer and consumer): `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, … Settings the origin relies on
    /// (idempotence, `acks`, offset handling) cannot be overridden.
    pub settings: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "attune.events".into(),
            dlq_topic: "attune.events.dlq".into(),
            group_id: "attune-origin".into(),
            scale_out: false,
            state_topic: "attune.state".into(),
            model_topic: "attune.model".into(),
            transaction_timeout_ms: 10_000,
            instance_id: None,
            partitions: 4,
            replication: 1,
            produce_timeout_ms: 10_000,
            settings: Default::default(),
        }
    }
}

/// Where snapshots go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// Chosen from what is configured: `url` → http, Cloudflare ids → cloudflare, `dir` → dir.
    #[default]
    Auto,
    None,
    /// The worker's dev bulk route (`http://127.0.0.1:8787/__attune/kv`) or any base URL with
    /// the Cloudflare bulk shape.
    Http,
    Cloudflare,
    Dir,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub target: TargetKind,
    /// Base URL for the http target; `PUT {url}/bulk`, `POST {url}/bulk/delete`.
    pub url: Option<String>,
    /// Bearer token for the http/cloudflare target.
    pub token: Option<String>,
    pub cloudflare_account_id: Option<String>,
    pub cloudflare_namespace_id: Option<String>,
    /// Cloudflare API base URL (a stand-in of the API for tests).
    pub cloudflare_api: String,
    /// Directory target.
    pub dir: Option<PathBuf>,
    /// At most one flush per this interval: the latency target (a change waits at most this
    /// long for others to share its request).
    pub flush_interval_ms: u64,
    /// Shared keys (`t`, `n:`, `c:`, `cfg`, `m`) already in KV are rewritten at most this
    /// often (a key KV does not hold yet goes at once). Default: 60 s on the Cloudflare target
    /// (KV takes up to 60 s to propagate, and writes are billed), the flush interval on the
    /// others (the dev route's local KV shows a write at once).
    pub shared_interval_ms: Option<u64>,
    /// At most one write per key per this interval (Cloudflare: 1 s).
    pub min_key_interval_ms: u64,
    /// Requests to the KV API per `budget_window_ms` (Cloudflare allows 1,200 per 5 minutes
    /// per user token, counting every API call of that user).
    pub budget_requests: u64,
    pub budget_window_ms: u64,
    /// Requests that may go at once after a quiet spell (on top of `budget_requests`).
    pub budget_burst: u64,
    pub max_pairs: usize,
    pub max_request_bytes: usize,
    pub request_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Lets `serve` publish to Cloudflare without a token or with the built-in dev profile
    /// key (development against a stand-in of the API only).
    pub allow_dev_secrets: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".attune"),
            listen: "127.0.0.1:7878".into(),
            ingest_token: None,
            insecure_dev_no_token: false,
            profile_key: DEV_PROFILE_KEY.into(),
            log_json: false,
            shutdown_deadline_ms: 10_000,
            failure_exit_delay_ms: 5_000,
            ingest: IngestConfig::default(),
            pipeline: PipelineConfig::default(),
            model: ModelConfig::default(),
            publish: PublishConfig::default(),
            log: LogConfig::default(),
            source: SourceKind::Log,
            kafka: KafkaConfig::default(),
            rules_file: None,
            rules: attune_core::rules::Config::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 10_000,
            queue_capacity: 256,
            max_lag_bytes: 256 << 20,
            retry_after_s: 1,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max: 65_536,
            profile_cache: 200_000,
            checkpoint_interval_ms: 10_000,
            checkpoint_max_unsaved: 100_000,
            dedup_horizon_ms: 7 * 24 * HOUR_MS,
            dlq_retention_ms: 7 * 24 * HOUR_MS,
            allowed_lateness_ms: 48 * HOUR_MS,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            // Chosen on the validation split of the Online Retail sample (`attune-lab eval
            // --validation`): a short window of the session (the 3 previous distinct items,
            // weighted 1/distance as sequential rules count, Ludewig & Jannach 2018; wider
            // windows add nothing), a similarity close to "bought with this" (it beats the
            // cosine), and a shrinkage of one co-occurrence (0.5 and 2 do worse).
            top_k: 30,
            history: 3,
            session_gap_ms: 30 * MINUTE_MS,
            similarity_alpha: 0.9,
            similarity_shrinkage: 1.0,
            shards: 16,
            trend_half_life_ms: 24 * HOUR_MS,
            trending_len: 100,
            per_category: 20,
        }
    }
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            target: TargetKind::Auto,
            url: None,
            token: None,
            cloudflare_account_id: None,
            cloudflare_namespace_id: None,
            cloudflare_api: "https://api.cloudflare.com/client/v4".into(),
            dir: None,
            flush_interval_ms: 1_000,
            shared_interval_ms: None,
            min_key_interval_ms: 1_000,
            budget_requests: 1_000,
            budget_window_ms: 300_000,
            budget_burst: 50,
            max_pairs: 10_000,
            max_request_bytes: 100_000_000,
            request_timeout_ms: 10_000,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            allow_dev_secrets: false,
        }
    }
}

impl Config {
    /// Defaults overlaid with a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Error::ConfigToml {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads `rules_file` (JSON) into `rules`; a bad file is an error, never a silent default.
    pub fn load_rules(&mut self) -> Result<()> {
        if let Some(path) = &self.rules_file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            self.rules = serde_json::from_str(&text).map_err(|source| Error::RulesJson {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Checks cross-field invariants.
    pub fn validate(&self) -> Result<()> {
        if self.pipeline.dedup_horizon_ms < self.pipeline.allowed_lateness_ms {
            return Err(Error::Config(
                "pipeline.dedup_horizon_ms must be at least pipeline.allowed_lateness_ms \
                 (a duplicate older than the horizon would otherwise be applied)"
                    .into(),
            ));
        }
        if attune_core::decay::EPOCH_MS <= self.pipeline.allowed_lateness_ms * 2 {
            return Err(Error::Config(
                "pipeline.allowed_lateness_ms must stay well under the core's decay epoch".into(),
            ));
        }
        if self.pipeline.checkpoint_max_unsaved > self.pipeline.profile_cache {
            return Err(Error::Config(
                "pipeline.checkpoint_max_unsaved must not exceed pipeline.profile_cache (changed \
                 users stay in memory until the next checkpoint)"
                    .into(),
            ));
        }
        if self.publish.max_pairs == 0 || self.publish.max_pairs > 10_000 {
            return Err(Error::Config("publish.max_pairs must be 1..=10000".into()));
        }
        if self.publish.budget_requests == 0 || self.publish.budget_window_ms == 0 {
            return Err(Error::Config(
                "publish.budget_requests and publish.budget_window_ms must be at least 1".into(),
            ));
        }
        if self.log.segment_bytes < 4096 {
            return Err(Error::Config(
                "log.segment_bytes must be at least 4096".into(),
            ));
        }
        if self.model.shards == 0 {
            return Err(Error::Config("model.shards must be at least 1".into()));
        }
        if self.source == SourceKind::Kafka {
            if !cfg!(feature = "kafka") {
                return Err(Error::Config(
                    "source = kafka, but this build has no Kafka support (the `kafka` feature)"
                        .into(),
                ));
            }
            let k = &self.kafka;
            if k.brokers.is_empty() || k.topic.is_empty() || k.group_id.is_empty() {
                return Err(Error::Config(
                    "kafka.brokers, kafka.topic and kafka.group_id must be set".into(),
                ));
            }
            let topics = [&k.topic, &k.dlq_topic, &k.state_topic, &k.model_topic];
            if k.scale_out && (1..topics.len()).any(|i| topics[..i].contains(&topics[i])) {
                return Err(Error::Config(
                    "kafka.topic, dlq_topic, state_topic and model_topic must all differ".into(),
                ));
            }
            if k.topic == k.dlq_topic {
                return Err(Error::Config(
                    "kafka.dlq_topic must differ from kafka.topic".into(),
                ));
            }
            if k.partitions == 0 || k.replication == 0 {
                return Err(Error::Config(
                    "kafka.partitions and kafka.replication must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }

    /// Fails closed: `serve` needs a non-empty ingest token, or the explicit development flag
    /// on a loopback listen address. An empty token is refused rather than read as "none": it
    /// is what an unset secret rendered into a variable looks like.
    pub fn check_serve_auth(&self) -> Result<()> {
        match (&self.ingest_token, self.insecure_dev_no_token) {
            (Some(t), _) if t.is_empty() => Err(Error::Config(
                "the ingest token is empty (an unset secret?): set a token, or for local \
                 development leave it out and pass --insecure-dev-no-token"
                    .into(),
            )),
            (Some(_), _) => Ok(()),
            (None, false) => Err(Error::Config(
                "serve needs an ingest token (--ingest-token or ATTUNE_INGEST_TOKEN); for local \
                 development on a loopback address, --insecure-dev-no-token"
                    .into(),
            )),
            (None, true) if is_loopback(&self.listen) => Ok(()),
            (None, true) => Err(Error::Config(format!(
                "--insecure-dev-no-token is allowed on a loopback listen address only, not {:?}",
                self.listen
            ))),
        }
    }

    /// The resolved publish target.
    pub fn target(&self) -> TargetKind {
        let p = &self.publish;
        match p.target {
            TargetKind::Auto => {
                if p.url.is_some() {
                    TargetKind::Http
                } else if p.cloudflare_account_id.is_some() && p.cloudflare_namespace_id.is_some() {
                    TargetKind::Cloudflare
                } else if p.dir.is_some() {
                    TargetKind::Dir
                } else {
                    TargetKind::None
                }
            }
            ref k => k.clone(),
        }
    }

    /// The shared keys' cadence (see [`PublishConfig::shared_interval_ms`]).
    pub fn shared_interval_ms(&self) -> u64 {
        self.publish
            .shared_interval_ms
            .unwrap_or(if self.target() == TargetKind::Cloudflare {
                60_000
            } else {
                self.publish.flush_interval_ms
            })
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }

    /// The embedded event log's directory (its segment files).
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }
}

/// The embedded event log's segments and their retention.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A segment is closed and the next one started once the next write would take it past
    /// this size (a single group commit may go over it).
    pub segment_bytes: u64,
    /// Closed segments whose last write is older than this go, once the checkpoint is past
    /// their end. 0 keeps them. Off by default: the log is what a damaged store is rebuilt
    /// from, and a rebuild after retention cannot bring back what the retired segments held.
    pub retention_ms: u64,
    /// Closed segments go, oldest first and only once the checkpoint is past their end, while
    /// the log is larger than this. 0: no size limit.
    pub retention_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            retention_ms: 0,
            retention_bytes: 0,
        }
    }
}

/// Whether a `host:port` listen address is on the loopback interface.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>, dev: bool, listen: &str) -> Config {
        Config {
            ingest_token: token.map(str::to_string),
            insecure_dev_no_token: dev,
            listen: listen.into(),
            ..Config::default()
        }
    }

    #[test]
    fn serve_auth_fails_closed() {
        assert!(
            with(Some("t"), false, "0.0.0.0:80")
                .check_serve_auth()
                .is_ok()
        );
        let empty = with(Some(""), true, "127.0.0.1:0").check_serve_auth();
        assert!(empty.unwrap_err().to_string().contains("empty"));
        assert!(with(None, false, "127.0.0.1:0").check_serve_auth().is_err());
        assert!(with(None, true, "127.0.0.1:0").check_serve_auth().is_ok());
        assert!(with(None, true, "[::1]:7878").check_serve_auth().is_ok());
        assert!(
            with(None, true, "localhost:7878")
                .check_serve_auth()
                .is_ok()
        );
        assert!(with(None, true, "0.0.0.0:7878").check_serve_auth().is_err());
        assert!(
            with(None, true, "10.0.0.5:7878")
                .check_serve_auth()
                .is_err()
        );
        assert!(
            with(None, true, "example.com:7878")
                .check_serve_auth()
                .is_err()
        );
    }
}
