//! The rules in force (segments, variants, experiments, profile weights): an operator of the
//! pipeline like dedup or the watermarks. Rules change only through rules records in the log,
//! applied at their position, so every run of the same log applies each event under the same
//! rules, and the `cfg` version moves with the checkpoint that holds the change.

use std::sync::Arc;

use attune_core::profile::ProfileConfig;
use attune_core::rules::Config as Rules;

use crate::error::{Error, Result};
use crate::metrics::ExposureArms;
use crate::store::{CheckpointReader, CheckpointWriter, keys};

/// The bytes a rules record holds for `rules`: their JSON, the form the pipeline compares
/// (a change of layout in the rules file is no change).
pub fn record_payload(rules: &Rules) -> Result<Vec<u8>> {
    serde_json::to_vec(rules).map_err(|e| Error::Corrupt(format!("rules as JSON: {e}")))
}

fn decode(json: &[u8], at: &str) -> Result<Rules> {
    serde_json::from_slice(json)
        .map_err(|e| Error::Corrupt(format!("{at} does not hold rules JSON: {e}")))
}

/// The rules stored at the last checkpoint (`None` before the first rules record).
pub fn stored(tx: &CheckpointReader) -> Result<Option<(Vec<u8>, Rules)>> {
    let Some(json) = tx.rules()? else {
        return Ok(None);
    };
    let rules = decode(&json, "the store's rules")?;
    Ok(Some((json, rules)))
}

#[derive(Debug)]
pub(crate) struct RulesInForce {
    rules: Arc<Rules>,
    /// The applied record's payload; `None` while the built-in defaults are in force.
    json: Option<Vec<u8>>,
    /// `cfg`'s version: one more at each change applied.
    version: u64,
    arms: ExposureArms,
    unsaved: bool,
}

impl RulesInForce {
    pub(crate) fn load(tx: &CheckpointReader) -> Result<Self> {
        let (json, rules) = match stored(tx)? {
            Some((json, rules)) => (Some(json), rules),
            None => (None, Rules::default()),
        };
        Ok(RulesInForce {
            arms: ExposureArms::of(&rules),
            rules: Arc::new(rules),
            json,
            version: tx.counter(keys::CFG_VERSION)?,
            unsaved: false,
        })
    }

    pub(crate) fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    pub(crate) fn profile(&self) -> &ProfileConfig {
        &self.rules.profile
    }

    pub(crate) fn exposure_arms(&self) -> &ExposureArms {
        &self.arms
    }

    /// Applies the rules record at `offset`. Returns the new `cfg` version, or `None` when
    /// the record repeats the rules in force (a restart that appended them again before the
    /// first copy was applied): nothing changes then, so no version is spent.
    pub(crate) fn apply(&mut self, payload: &[u8], offset: u64) -> Result<Option<u64>> {
        let rules = decode(payload, &format!("the rules record at offset {offset}"))?;
        let json = record_payload(&rules)?;
        if self.json.as_deref() == Some(json.as_slice()) {
            return Ok(None);
        }
        self.version += 1;
        self.arms = ExposureArms::of(&rules);
        self.rules = Arc::new(rules);
        self.json = Some(json);
        self.unsaved = true;
        Ok(Some(self.version))
    }

    /// Writes a change applied since the last checkpoint.
    pub(crate) fn checkpoint(&self, tx: &CheckpointWriter) -> Result<()> {
        match &self.json {
            Some(json) if self.unsaved => tx.put_rules(json, self.version),
            _ => Ok(()),
        }
    }

    pub(crate) fn committed(&mut self) {
        self.unsaved = false;
    }
}

/// The rules the embedded log will have in force once the pipeline applied it to its end: the
/// last rules record after the checkpoint, else the store's. `None`: no rules record was
/// ever applied or appended.
pub fn last_appended(
    store: &crate::store::Store,
    log: &crate::log::Log,
) -> Result<Option<Vec<u8>>> {
    use crate::log::{RecordKind, Source};
    let mut last = stored(&store.read_checkpoint()?)?.map(|(json, _)| json);
    let mut reader = log.reader()?;
    let mut from = store
        .meta(&keys::offset(crate::log::SOURCE))?
        .max(reader.start());
    let mut buf = Vec::new();
    while from < reader.end() {
        buf.clear();
        reader.read(from, 4096, std::time::Duration::ZERO, &mut buf)?;
        let Some(end) = buf.last().map(|r| r.next) else {
            break;
        };
        if let Some(rec) = buf.iter().rev().find(|r| r.kind == RecordKind::Rules) {
            last = Some(rec.payload.clone());
        }
        from = end;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change spends a version, a repeat of the rules in force none, and a record that is
    /// not rules JSON is an error naming its offset (the log holds only rules the node
    /// checked, so that is damage, not input to skip).
    #[test]
    fn applies_changes_once_and_refuses_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("store.redb")).unwrap();
        let mut rules = RulesInForce::load(&store.read_checkpoint().unwrap()).unwrap();
        assert_eq!(*rules.rules().as_ref(), Rules::default());
        let default = record_payload(&Rules::default()).unwrap();
        assert_eq!(rules.apply(&default, 100).unwrap(), Some(1));
        assert_eq!(rules.apply(&default, 200).unwrap(), None);
        let mut other = Rules::default();
        other.profile.view.weight = 9.0;
        let other_json = serde_json::to_vec_pretty(&other).unwrap();
        assert_eq!(rules.apply(&other_json, 300).unwrap(), Some(2));
        assert_eq!(rules.profile().view.weight, 9.0);
        let err = rules.apply(b"{\"segments\": 7}", 400).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("offset 400"), "{err}");

        // Checkpointed, then loaded again: the same rules and version.
        let tx = store.begin_checkpoint().unwrap();
        rules.checkpoint(&tx).unwrap();
        tx.commit().unwrap();
        let loaded = RulesInForce::load(&store.read_checkpoint().unwrap()).unwrap();
        assert_eq!(loaded.rules(), rules.rules());
        assert_eq!(loaded.version, 2);
    }
}
