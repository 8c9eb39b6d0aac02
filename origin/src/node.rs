//! A node: the opened store, log and model of one data directory, plus the operations the
//! CLI and the admin API share (catalog, forget, full publish).

use std::sync::{Arc, Mutex};

use attune_core::CatalogItem;
use attune_core::hash::profile_key;
use attune_core::model::keys as kv;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::config::Config;
use crate::error::Result;
use crate::live::{self, Live, SharedLive, Unpublished};
use crate::log::Log;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::pipeline::Pipeline;
use crate::store::{
    FORGOTTEN, META, OUTBOX, Op, OutboxEntry, PENDING, PENDING_KEY, PUBLISHED, Store, USERS,
    enqueue_shared, keys, outbox_put, unpack_pending,
};

/// The embedded log's source name (its offset key in the store).
pub const LOG_SOURCE: &str = "log";

#[derive(Clone)]
pub struct Node {
    pub cfg: Config,
    pub store: Store,
    pub log: Log,
    pub model: Arc<Mutex<Model>>,
    /// What the pipeline applied beyond the last checkpoint, shared with the publisher.
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
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
        let store = Store::open(&cfg.store_path())?;
        let committed = store.meta(&keys::offset(LOG_SOURCE))?;
        let log = Log::open(&cfg.log_path(), committed, cfg.ingest.queue_capacity)?;
        let model = Model::load(cfg.model.clone(), &store)?;
        let live = load_live(&store)?;
        let node = Node {
            cfg: cfg.clone(),
            store,
            log,
            model: Arc::new(Mutex::new(model)),
            live: Arc::new(Mutex::new(live)),
            metrics: Arc::new(Metrics::new()),
        };
        node.ensure_config_enqueued()?;
        Ok(node)
    }

    pub fn pipeline(&self) -> Result<Pipeline> {
        Pipeline::new(
            &self.cfg,
            self.store.clone(),
            self.model.clone(),
            self.live.clone(),
            self.metrics.clone(),
            LOG_SOURCE,
        )
    }

    /// Makes sure the current rules are (or will be) in KV under `cfg`: a new version whenever
    /// their content differs from what was last queued, so KV never keeps stale rules and
    /// never goes back a version.
    fn ensure_config_enqueued(&self) -> Result<()> {
        let content = serde_json::to_vec(&self.cfg.rules).unwrap_or_default();
        let hash = u64::from(crc32fast::hash(&content)) | (content.len() as u64) << 32;
        let tx = self.store.db.begin_write()?;
        {
            let published = tx.open_table(PUBLISHED)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut meta = tx.open_table(META)?;
            let queued_hash = meta.get(keys::CFG_HASH)?.map(|v| v.value());
            let never_queued =
                published.get(kv::CONFIG)?.is_none() && outbox.get(kv::CONFIG)?.is_none();
            if never_queued || queued_hash != Some(hash) {
                let version = meta.get(keys::CFG_VERSION)?.map_or(0, |v| v.value()) + 1;
                meta.insert(keys::CFG_VERSION, version)?;
                meta.insert(keys::CFG_HASH, hash)?;
                enqueue_shared(
                    &mut outbox,
                    [kv::CONFIG.to_string()],
                    version,
                    crate::now_ms(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds or replaces catalog entries and queues their shards for publishing.
    pub fn put_catalog(&self, items: Vec<CatalogItem>) -> Result<usize> {
        let n = items.len();
        let tx = self.store.db.begin_write()?;
        {
            let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            let shards = model.put_catalog(&tx, items)?;
            let mut meta = tx.open_table(META)?;
            let seq = model.next_seq();
            meta.insert(keys::MODEL_SEQ, seq)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            let now = crate::now_ms();
            let mut shared: Vec<String> = shards.iter().map(|s| kv::catalog(*s)).collect();
            // Categories feed `Trending.by_category`.
            shared.push(kv::TRENDING.into());
            enqueue_shared(&mut outbox, shared, seq, now)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// A user's newest state: the pipeline's if it holds one (it may be ahead of the last
    /// checkpoint), else the store's.
    pub fn user(&self, user: &str) -> Result<Option<crate::store::UserState>> {
        if let Some(state) = live::lock(&self.live).user(user) {
            return Ok(Some(state.clone()));
        }
        self.store.user(user)
    }

    /// Privacy delete: removes the user's profile from the store and from memory, queues the
    /// KV delete, and records the log end so the pipeline drops the user's events written
    /// before now (also when it replays them after a crash).
    pub fn forget(&self, user: &str) -> Result<bool> {
        let key = profile_key(self.cfg.profile_key.as_bytes(), user);
        let until = self.log.end();
        // Lock order: redb write transaction → live (as the pipeline's checkpoint).
        let tx = self.store.db.begin_write()?;
        let existed;
        {
            let mut live = live::lock(&self.live);
            let mut users = tx.open_table(USERS)?;
            let held = live::user_key(user);
            existed = users.remove(held)?.is_some() | live.users.remove(&held).is_some();
            live.stored.remove(&held);
            live.unpublished.remove(&held);
            live.forgotten.insert(user.into(), until);
            tx.open_table(FORGOTTEN)?.insert(user, until)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            outbox.insert(
                key.as_str(),
                OutboxEntry {
                    op: Op::Delete,
                    version: 0,
                    accepted_ms: crate::now_ms(),
                    user: None,
                }
                .encode()?
                .as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(existed)
    }

    /// Queues every profile and shared key for publishing again (`publish --full`).
    pub fn enqueue_full(&self) -> Result<usize> {
        let tx = self.store.db.begin_write()?;
        let mut n = 0;
        {
            let users = tx.open_table(USERS)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut published = tx.open_table(PUBLISHED)?;
            let mut meta = tx.open_table(META)?;
            let now = crate::now_ms();
            for row in users.iter()? {
                let (_, v) = row?;
                let (user, state) = crate::store::user_row_id(v.value())?;
                let state = crate::store::UserState::decode(state)?;
                let key = profile_key(self.cfg.profile_key.as_bytes(), user);
                published.remove(key.as_str())?;
                outbox_put(
                    &mut outbox,
                    &key,
                    OutboxEntry {
                        op: Op::Put,
                        version: state.profile.version,
                        accepted_ms: now,
                        user: Some(user.to_string()),
                    },
                )?;
                n += 1;
            }
            let seq = self
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_seq();
            meta.insert(keys::MODEL_SEQ, seq)?;
            let shards = self.cfg.model.shards;
            let mut shared = vec![kv::TRENDING.to_string()];
            for s in 0..shards {
                shared.push(kv::catalog(s));
                shared.push(kv::neighbours(s));
            }
            n += enqueue_shared(&mut outbox, shared, seq, now)?;
            // `cfg` has its own version line (see `ensure_config_enqueued`): re-send the current
            // rules at their own version. Giving them the model's sequence number would let a
            // later rules change (a smaller version) look older than KV and never be sent.
            let cfg_version = meta.get(keys::CFG_VERSION)?.map_or(1, |v| v.value());
            published.remove(kv::CONFIG)?;
            n += enqueue_shared(&mut outbox, [kv::CONFIG.to_string()], cfg_version, now)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Applies everything durable in the log and checkpoints (offline commands).
    pub fn drain(&self) -> Result<crate::pipeline::BatchOutcome> {
        use crate::log::Source;
        let mut pipeline = self.pipeline()?;
        let mut reader = self.log.reader()?;
        let mut total = crate::pipeline::BatchOutcome::default();
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

/// The publishes and forgets the last checkpoint left waiting.
fn load_live(store: &Store) -> Result<Live> {
    let mut live = Live::default();
    let tx = store.db.begin_read()?;
    let now = crate::now_ms();
    if let Some(row) = tx.open_table(PENDING)?.get(PENDING_KEY)? {
        let users = unpack_pending(row.value())
            .ok_or_else(|| crate::Error::Store("the pending publishes row is malformed".into()))?;
        for (user, version) in users {
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
    }
    for row in tx.open_table(FORGOTTEN)?.iter()? {
        let (k, v) = row?;
        live.forgotten.insert(k.value().into(), v.value());
    }
    let users = tx.open_table(USERS)?;
    live.stored.reserve(users.len()? as usize);
    for row in users.iter()? {
        let (k, _) = row?;
        live.stored.insert(k.value());
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetKind;
    use crate::store::OutboxEntry;

    fn queued_version(node: &Node, key: &str) -> Option<u64> {
        let tx = node.store.db.begin_read().ok()?;
        let outbox = tx.open_table(OUTBOX).ok()?;
        let row = outbox.get(key).ok()??;
        OutboxEntry::decode(row.value()).ok().map(|e| e.version)
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
            assert_eq!(queued_version(&node, kv::CONFIG), Some(1));
            for _ in 0..5 {
                node.put_catalog(Vec::new()).unwrap();
            }
            node.enqueue_full().unwrap();
            assert_eq!(queued_version(&node, kv::CONFIG), Some(1));
            assert_eq!(queued_version(&node, kv::TRENDING), Some(6));
        }
        cfg.rules.experiments.clear();
        cfg.rules.segments.clear();
        let node = Node::open(&cfg).unwrap();
        assert_eq!(queued_version(&node, kv::CONFIG), Some(2));
    }
}
