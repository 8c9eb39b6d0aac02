//! A node: the opened store, log and model of one data directory, plus the operations the
//! CLI and the admin API share (catalog, forget, full publish).

use std::sync::{Arc, Mutex};

use attune_core::CatalogItem;
use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use serde_json::json;

use crate::config::Config;
use crate::error::Result;
use crate::log::{Log, RecordKind};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::store::{Store, keys};
use crate::stream::Pipeline;
use crate::stream::live::{self, Live, SharedLive, Unpublished};
use crate::stream::source::EventProducer;

/// The embedded log's source name (its offset key in the store).
pub use crate::log::SOURCE as LOG_SOURCE;

#[derive(Clone)]
pub struct Node {
    pub cfg: Config,
    pub store: Store,
    pub log: Log,
    pub model: Arc<Mutex<Model>>,
    /// What the pipeline applied beyond the last checkpoint, shared with the publisher.
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    /// Which long-running parts have stopped, and why (`/healthz`, `/readyz`, ingest).
    pub health: crate::lifecycle::Health,
    /// Kafka mode: events, forgets and catalog changes go to the topic, not the embedded log.
    pub kafka: Option<Arc<EventProducer>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    pub fn open(cfg: &Config) -> Result<Node> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let store = crate::store::open_or_rebuild(&cfg.store_path(), &cfg.log_dir())?;
        let committed = store.meta(&keys::offset(LOG_SOURCE))?;
        let log = Log::open(
            &cfg.log_dir(),
            committed,
            cfg.ingest.queue_capacity,
            cfg.log.segment_bytes,
        )?;
        let model = Model::load(cfg.model.clone(), &store)?;
        let live = load_live(&store)?;
        let node = Node {
            cfg: cfg.clone(),
            store,
            log,
            model: Arc::new(Mutex::new(model)),
            live: Arc::new(Mutex::new(live)),
            metrics: Arc::new(Metrics::new()),
            health: crate::lifecycle::Health::default(),
            kafka: kafka_producer(cfg)?,
        };
        Ok(node)
    }

    pub fn pipeline(&self) -> Result<Pipeline> {
        #[cfg(feature = "kafka")]
        if self.kafka.is_some() {
            use crate::stream::source::kafka;
            let sink = kafka::DlqProducer::new(&self.cfg.kafka)?;
            return Ok(Pipeline::new(
                &self.cfg,
                self.store.clone(),
                self.model.clone(),
                self.live.clone(),
                self.metrics.clone(),
                &kafka::source_name(&self.cfg.kafka.topic),
            )?
            .partitioned()
            .with_dead_letter_sink(Box::new(sink)));
        }
        let mut pipeline = Pipeline::new(
            &self.cfg,
            self.store.clone(),
            self.model.clone(),
            self.live.clone(),
            self.metrics.clone(),
            LOG_SOURCE,
        )?;
        pipeline.maintain_log(self.log.clone())?;
        Ok(pipeline)
    }

    /// Appends the configured rules to the log as a rules record when they differ from the
    /// last ones it holds (applied or still to apply); answers whether it did. `serve` calls
    /// it at start; offline commands leave the rules alone (an `inspect` or a `rebuild` run
    /// without the service's rules file must not change them). The pipeline
    /// applies them at their position and queues `cfg` at the next version, so the rules in
    /// force, and what KV gets, are a function of the log.
    pub fn append_rules_if_changed(&self) -> Result<bool> {
        use crate::stream::rules;
        let wanted = rules::record_payload(&self.cfg.rules)?;
        match &self.kafka {
            // The topic's tail after the checkpoint cannot be scanned here: compared with the
            // rules in force, a change not applied yet is sent again, and applied as no change.
            Some(kafka) => {
                let stored = rules::stored(&self.store.read_checkpoint()?)?;
                if stored.is_some_and(|(json, _)| json == wanted) {
                    return Ok(false);
                }
                kafka.send_rules(&wanted)?;
            }
            None => {
                let last = rules::last_appended(&self.store, &self.log)?;
                if last.as_deref() == Some(wanted.as_slice()) {
                    return Ok(false);
                }
                self.log.append_admin(RecordKind::Rules, wanted)?;
            }
        }
        Ok(true)
    }

    /// Adds or replaces catalog entries: a record in the log, durable when this returns. The
    /// pipeline applies it at its position (events after it see the new categories, before it
    /// the old ones, in every replay) and queues the changed shards for publishing.
    pub fn put_catalog(&self, items: Vec<CatalogItem>) -> Result<usize> {
        let n = items.len();
        // Records well under the log's limit: a large catalog takes several, in order.
        const RECORD_BYTES: usize = 1 << 20;
        let mut chunk: Vec<CatalogItem> = Vec::new();
        let mut bytes = 0;
        for item in items {
            let size = item.id.len()
                + item.title.len()
                + item.url.len()
                + item.image.len()
                + item.price.len()
                + item.category.len()
                + 64;
            if !chunk.is_empty() && bytes + size > RECORD_BYTES {
                let payload = rmp_serde::to_vec_named(&std::mem::take(&mut chunk))?;
                self.append_catalog(payload)?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(item);
        }
        let payload = rmp_serde::to_vec_named(&chunk)?;
        self.append_catalog(payload)?;
        Ok(n)
    }

    fn append_catalog(&self, payload: Vec<u8>) -> Result<()> {
        match &self.kafka {
            Some(kafka) => kafka.send_catalog(&payload),
            None => self
                .log
                .append_admin(RecordKind::Catalog, payload)
                .map(drop),
        }
    }

    /// A user's newest state: the pipeline's if it holds one (it may be ahead of the last
    /// checkpoint), else the store's.
    pub fn user(&self, user: &str) -> Result<Option<crate::store::UserState>> {
        if let Some(state) = live::lock(&self.live).user(user) {
            return Ok(Some(state.clone()));
        }
        self.store.user(user)
    }

    /// Privacy delete: a forget record in the log, durable when this returns. The pipeline
    /// applies it at its position: the user's state leaves memory, then the store and KV at
    /// the next checkpoint; their later events start a new profile. Answers whether the user
    /// had a state when the record was written.
    pub fn forget(&self, user: &str) -> Result<bool> {
        let existed = self.user(user)?.is_some();
        match &self.kafka {
            Some(kafka) => kafka.send_forget(user)?,
            None => {
                self.log
                    .append_admin(RecordKind::Forget, user.as_bytes().to_vec())?;
            }
        }
        Ok(existed)
    }

    /// Queues every profile and shared key for publishing again (`publish --full`).
    pub fn enqueue_full(&self) -> Result<usize> {
        let tx = self.store.begin_checkpoint()?;
        let now = crate::now_ms();
        let secret = self.cfg.profile_key.as_bytes();
        let mut n = tx.requeue_users(|user| profile_key(secret, user), now)?;
        let seq = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq();
        tx.put_counter(keys::MODEL_SEQ, seq)?;
        let shards = self.cfg.model.shards;
        let mut shared = vec![kv::TRENDING.to_string()];
        for s in 0..shards {
            shared.push(kv::catalog(s));
            shared.push(kv::neighbours(s));
        }
        n += tx.enqueue_shared(shared, seq, now)?;
        // `cfg` has its own version line (one step per rules change applied): re-send the
        // rules in force at their own version. Giving them the model's sequence number would
        // let a later rules change (a smaller version) look older than KV and never be sent.
        if let Some(cfg_version) = tx.counter(keys::CFG_VERSION)? {
            tx.unpublish(kv::CONFIG)?;
            n += tx.enqueue_shared([kv::CONFIG.to_string()], cfg_version, now)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Applies everything durable in the log and checkpoints (offline commands).
    pub fn drain(&self) -> Result<crate::stream::BatchOutcome> {
        use crate::log::Source;
        if self.kafka.is_some() {
            return Err(crate::Error::NeedsEmbeddedLog("applying records offline"));
        }
        let mut pipeline = self.pipeline()?;
        let mut reader = self.log.reader()?;
        let mut total = crate::stream::BatchOutcome::default();
        let mut buf = Vec::new();
        loop {
            let from = pipeline.offset().max(reader.start());
            if from >= reader.end() {
                let t = std::time::Instant::now();
                total.checkpoints += pipeline.checkpoint()?;
                total.checkpoint_us += t.elapsed().as_micros() as u64;
                return Ok(total);
            }
            buf.clear();
            reader.read(
                from,
                pipeline.batch_limit(self.cfg.pipeline.batch_max),
                std::time::Duration::ZERO,
                &mut buf,
            )?;
            total.add(&pipeline.process(&buf)?);
        }
    }
}

/// Read-only views the CLI (`inspect`) and the admin API share.
impl Node {
    /// A profile as JSON for `inspect user`.
    pub fn inspect_user_json(&self, id: &str) -> Result<Option<serde_json::Value>> {
        let node = self;
        let Some(state) = node.user(id)? else {
            return Ok(None);
        };
        let key = profile_key(node.cfg.profile_key.as_bytes(), id);
        let published = node
            .store
            .published()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v);
        let p = &state.profile;
        let cfg = live::lock(&node.live).rules.profile.clone();
        let now = crate::now_ms();
        Ok(Some(json!({
            "user": id,
            "key": key,
            "version": p.version,
            "published_version": published,
            "first_seen": p.first_seen,
            "last_seen": p.last_seen,
            "purchases": p.purchases,
            "visits": p.visit_count(),
            "top_items": p.top_items(now, &cfg, 10),
            "top_categories": p.top_categories(now, &cfg, 5),
            "cart": p.cart_items().collect::<Vec<_>>(),
            "purchased": p.purchased.iter().map(|x| x.item.as_str()).collect::<Vec<_>>(),
            "recent": node.model.lock().map(|m| m.recent_names(&state)).unwrap_or_default(),
            "snapshot_bytes": attune_core::wire::encode_profile(
                &attune_core::wire::Envelope::new(p.version, p.last_seen, p.clone()),
                attune_core::wire::PROFILE_CAP_BYTES).len(),
        })))
    }

    /// The pipeline's source name (its offset key in the store).
    pub fn source_name(&self) -> String {
        #[cfg(feature = "kafka")]
        if self.kafka.is_some() {
            return crate::stream::source::kafka::source_name(&self.cfg.kafka.topic);
        }
        LOG_SOURCE.to_string()
    }

    /// Pipeline and publisher progress (no user data).
    ///
    /// The counters are as of the last checkpoint (the pipeline checkpoints whenever it catches up
    /// with the log); `applied_offset` is what it applied in memory.
    pub fn status_json(&self, applied_offset: u64) -> serde_json::Value {
        let node = self;
        let s = &node.store;
        let m = |k: &str| s.meta(k).unwrap_or(0);
        use crate::store::keys;
        let unpublished = crate::stream::live::lock(&node.live).unpublished_len();
        let log = node.log.usage();
        json!({
            // The embedded log's end; in Kafka mode the topic's ends are the broker's
            // (the group's lag).
            "log_end": if node.kafka.is_some() { json!(null) } else { json!(node.log.end()) },
            "log_start": log.start,
            "log_segments": log.segments,
            "log_bytes": log.bytes,
            "applied_offset": applied_offset,
            "checkpointed_offset": m(&keys::offset(&node.source_name())),
            "source": node.source_name(),
            "unpublished": unpublished,
            "received": m(keys::RECEIVED),
            "applied": m(keys::APPLIED),
            "duplicates": m(keys::DUPLICATES),
            "dlq": m(keys::DLQ),
            "late": m(keys::LATE),
            "outbox": s.outbox_len().unwrap_or(0),
            "catalog": node.model.lock().map(|m| m.catalog_len()).unwrap_or(0),
        })
    }
}

/// Kafka mode's producer, when the config selects Kafka.
fn kafka_producer(cfg: &Config) -> Result<Option<Arc<EventProducer>>> {
    if cfg.source != crate::config::SourceKind::Kafka {
        return Ok(None);
    }
    #[cfg(feature = "kafka")]
    {
        Ok(Some(Arc::new(EventProducer::new(&cfg.kafka)?)))
    }
    #[cfg(not(feature = "kafka"))]
    {
        Err(crate::Error::Config(
            "source = kafka, but this build has no Kafka support".into(),
        ))
    }
}

/// The publishes the last checkpoint left waiting, and which users the store holds.
fn load_live(store: &Store) -> Result<Live> {
    let mut live = Live::default();
    let tx = store.read_checkpoint()?;
    let now = crate::now_ms();
    for (user, version) in tx.pending()? {
        live.unpublished.insert(
            live::user_key(&user),
            (
                user.into(),
                Unpublished {
                    version,
                    accepted_ms: now,
                },
            ),
        );
    }
    let keys = tx.user_keys()?;
    live.stored.reserve(keys.len());
    live.stored.extend(keys);
    if let Some((_, rules)) = crate::stream::rules::stored(&tx)? {
        live.rules = Arc::new(rules);
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::config::TargetKind;
    use crate::store::FORMAT_VERSION;

    fn queued_version(node: &Node, key: &str) -> Option<u64> {
        node.store.queued(key).unwrap().map(|e| e.version)
    }

    /// `cfg` keeps its own version line: a full publish re-sends the current rules at their
    /// version (not the model's sequence), and a later rules change gets the next version.
    #[test]
    fn full_publish_keeps_the_config_version_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        {
            let node = Node::open(&cfg).unwrap();
            assert!(node.append_rules_if_changed().unwrap());
            assert_eq!(
                queued_version(&node, kv::CONFIG),
                None,
                "queued when applied"
            );
            node.drain().unwrap();
            assert_eq!(queued_version(&node, kv::CONFIG), Some(1));
            for _ in 0..5 {
                node.put_catalog(Vec::new()).unwrap();
            }
            node.drain().unwrap();
            node.enqueue_full().unwrap();
            assert_eq!(queued_version(&node, kv::CONFIG), Some(1));
            assert_eq!(queued_version(&node, kv::TRENDING), Some(6));
        }
        cfg.rules.experiments.clear();
        cfg.rules.segments.clear();
        let node = Node::open(&cfg).unwrap();
        assert!(node.append_rules_if_changed().unwrap());
        node.drain().unwrap();
        assert_eq!(queued_version(&node, kv::CONFIG), Some(2));
    }

    fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
            crate::now_ms() - 1000 + n
        )
        .into_bytes()
    }

    fn item(id: &str) -> CatalogItem {
        CatalogItem {
            id: id.into(),
            title: format!("Item {id}"),
            url: format!("/p/{id}"),
            image: String::new(),
            price: "£1.00".into(),
            category: "home".into(),
        }
    }

    /// A node with events applied and checkpointed (one user forgotten), closed again.
    fn populated(dir: &std::path::Path) -> (Config, Vec<(String, attune_core::Profile)>) {
        let mut cfg = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        let node = Node::open(&cfg).unwrap();
        node.put_catalog(vec![item("x"), item("y")]).unwrap();
        let events = vec![
            ev(1, "a", "x"),
            ev(2, "a", "y"),
            ev(3, "b", "x"),
            ev(4, "c", "y"),
        ];
        node.log
            .append_blocking(crate::now_ms(), "t", events)
            .unwrap();
        node.drain().unwrap();
        node.forget("c").unwrap();
        node.drain().unwrap();
        let profiles = node.store.profiles().unwrap();
        assert_eq!(profiles.len(), 2);
        (cfg, profiles)
    }

    fn set_format(path: &std::path::Path, version: u64) {
        crate::store::write_format(path, version).unwrap();
    }

    fn moved_aside(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("store.redb.replaced-"))
            .collect()
    }

    /// A store of another format version is moved aside and rebuilt from the log: the same
    /// profiles, the catalog and the forget replayed (the forgotten user stays gone).
    #[test]
    fn a_store_of_another_format_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, profiles) = populated(dir.path());
        set_format(&cfg.store_path(), FORMAT_VERSION + 1);
        let node = Node::open(&cfg).unwrap();
        assert_eq!(moved_aside(dir.path()).len(), 1);
        assert!(node.store.profiles().unwrap().is_empty(), "a fresh store");
        let o = node.drain().unwrap();
        // `c`'s event was erased from the log when its forget was checkpointed.
        assert_eq!(o.applied, 3);
        assert_eq!(node.store.profiles().unwrap(), profiles);
        assert!(node.user("c").unwrap().is_none());
        assert_eq!(node.store.catalog().unwrap().len(), 2);
        assert_eq!(node.store.meta(keys::FORMAT).unwrap(), FORMAT_VERSION);
        drop(node);
        // Rebuilt once: the next open uses it as it is.
        let node = Node::open(&cfg).unwrap();
        assert_eq!(moved_aside(dir.path()).len(), 1);
        assert_eq!(node.store.profiles().unwrap(), profiles);
    }

    /// A file redb refuses (here: not a database at all) is rebuilt from the log too, with
    /// the catalog and the forget: both are records in the log.
    #[test]
    fn a_foreign_file_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, profiles) = populated(dir.path());
        std::fs::write(cfg.store_path(), b"not a redb database, not even close").unwrap();
        let node = Node::open(&cfg).unwrap();
        assert_eq!(moved_aside(dir.path()).len(), 1);
        node.drain().unwrap();
        assert_eq!(node.store.profiles().unwrap(), profiles);
        assert!(node.user("c").unwrap().is_none());
        assert_eq!(node.store.catalog().unwrap().len(), 2);
        assert!(profiles.iter().all(|(_, p)| !p.categories.is_empty()));
    }

    /// Without a log that holds what the store held, nothing is touched and the error names
    /// both files and what to do.
    #[test]
    fn refuses_when_the_log_cannot_rebuild_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, _) = populated(dir.path());
        set_format(&cfg.store_path(), FORMAT_VERSION + 1);
        // A log cut short of the store's checkpoint: its first segment, half of it.
        let segment = crate::log::segment_path(&cfg.log_dir(), crate::log::FIRST_OFFSET);
        let log = std::fs::read(&segment).unwrap();
        std::fs::remove_dir_all(cfg.log_dir()).unwrap();
        std::fs::create_dir(cfg.log_dir()).unwrap();
        std::fs::write(&segment, &log[..log.len() / 2]).unwrap();
        let err = Node::open(&cfg).unwrap_err();
        assert!(matches!(err, Error::CannotRebuild { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&*cfg.store_path().to_string_lossy()), "{msg}");
        assert!(msg.contains(&*cfg.log_dir().to_string_lossy()), "{msg}");
        assert!(msg.contains("before the store's checkpoint"), "{msg}");
        assert!(msg.contains("move the store away"), "{msg}");
        // No log at all, and a store whose content is unknown.
        std::fs::remove_dir_all(cfg.log_dir()).unwrap();
        std::fs::write(cfg.store_path(), b"garbage").unwrap();
        let msg = Node::open(&cfg).unwrap_err().to_string();
        assert!(msg.contains("holds no segments"), "{msg}");
        assert_eq!(std::fs::read(cfg.store_path()).unwrap(), b"garbage");
        assert!(moved_aside(dir.path()).is_empty());
    }
}
