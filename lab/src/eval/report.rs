//! The metrics (HR@10, NDCG@10, MRR@10, coverage, by context length) and the report.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Protocol;

/// Accumulated scores of one method (overall or in one bucket).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scores {
    pub cases: usize,
    pub hr: f64,
    pub ndcg: f64,
    pub mrr: f64,
}

impl Scores {
    fn add(&mut self, position: Option<usize>) {
        self.cases += 1;
        if let Some(p) = position {
            self.hr += 1.0;
            self.ndcg += 1.0 / ((p + 2) as f64).log2();
            self.mrr += 1.0 / (p + 1) as f64;
        }
    }

    fn finish(&mut self) {
        let n = self.cases.max(1) as f64;
        self.hr /= n;
        self.ndcg /= n;
        self.mrr /= n;
    }
}

/// Context-length buckets.
pub const BUCKETS: [&str; 3] = ["1", "2-4", "5+"];

fn bucket(len: usize) -> usize {
    match len {
        0 | 1 => 0,
        2..=4 => 1,
        _ => 2,
    }
}

/// One method's results.
#[derive(Clone, Debug, Serialize)]
pub struct MethodReport {
    pub method: String,
    #[serde(flatten)]
    pub overall: Scores,
    /// Distinct recommended items over the catalog's size.
    pub coverage: f64,
    /// By context length, in [`BUCKETS`] order.
    pub by_context: Vec<Scores>,
    #[serde(skip)]
    recommended: BTreeSet<String>,
}

impl MethodReport {
    pub(super) fn new(method: &str) -> Self {
        MethodReport {
            method: method.into(),
            overall: Scores::default(),
            coverage: 0.0,
            by_context: vec![Scores::default(); BUCKETS.len()],
            recommended: BTreeSet::new(),
        }
    }

    pub(super) fn record(&mut self, picks: &[String], target: &str, context_len: usize) {
        let position = picks.iter().position(|p| p == target);
        self.overall.add(position);
        self.by_context[bucket(context_len)].add(position);
        self.recommended.extend(picks.iter().cloned());
    }

    pub(super) fn finish(&mut self, catalog: usize) {
        self.overall.finish();
        self.by_context.iter_mut().for_each(Scores::finish);
        self.coverage = self.recommended.len() as f64 / catalog.max(1) as f64;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub protocol: Protocol,
    pub validation: bool,
    /// Events the model and profiles learnt from.
    pub training_events: usize,
    /// Time of the first event not trained on (time-split).
    pub split_ts: Option<u64>,
    pub test_baskets: usize,
    pub cases: usize,
    pub catalog: usize,
    /// The whole trained neighbour model as one KV value (the origin splits it into
    /// `ModelConfig::shards` values): what the edge reads, well under KV's 25 MiB per value.
    pub neighbour_bytes: usize,
    pub methods: Vec<MethodReport>,
}

impl Report {
    /// The results as markdown: the overall table and the context-length breakdown.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let what = match (self.protocol, self.validation) {
            (Protocol::TimeSplit, false) => {
                "time-split session protocol (test: the last 20% of invoices by time)"
            }
            (Protocol::TimeSplit, true) => {
                "time-split session protocol, validation split (inside the training period)"
            }
            (Protocol::LeaveLastOut, _) => "leave-last-out (profile only, no time split)",
        };
        s.push_str(&format!(
            "{what} on the Online Retail sample: {} cases from {} test baskets, {} training events, catalog {} items\n\n",
            self.cases, self.test_baskets, self.training_events, self.catalog
        ));
        s.push_str(&format!(
            "neighbour lists of the trained model, encoded as one KV value: {} bytes\n\n",
            self.neighbour_bytes
        ));
        s.push_str("| method | HR@10 | NDCG@10 | MRR@10 | coverage |\n|---|---|---|---|---|\n");
        for m in &self.methods {
            s.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                m.method, m.overall.hr, m.overall.ndcg, m.overall.mrr, m.coverage
            ));
        }
        s.push_str("\nby context length (HR@10 / NDCG@10; cases):\n\n| method |");
        let cases: Vec<usize> = self
            .methods
            .first()
            .map(|m| m.by_context.iter().map(|b| b.cases).collect())
            .unwrap_or_default();
        for (b, n) in BUCKETS
            .iter()
            .zip(cases.iter().chain(std::iter::repeat(&0)))
        {
            s.push_str(&format!(" {b} ({n}) |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(BUCKETS.len()));
        s.push('\n');
        for m in &self.methods {
            s.push_str(&format!("| {} |", m.method));
            for b in &m.by_context {
                s.push_str(&format!(" {:.3} / {:.3} |", b.hr, b.ndcg));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_hits_by_position() {
        let mut m = MethodReport::new("m");
        let picks: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        m.record(&picks, "x", 1);
        m.record(&picks, "z", 3);
        m.record(&picks, "w", 7);
        m.finish(10);
        assert_eq!(m.overall.cases, 3);
        assert!((m.overall.hr - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.overall.mrr - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m.overall.ndcg - (1.0 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(m.by_context[0].cases, 1);
        assert_eq!(m.by_context[1].cases, 1);
        assert_eq!(m.by_context[2].hr, 0.0);
        assert!((m.coverage - 0.3).abs() < 1e-12);
    }
}
