//! The results: one sample per cell and round, and the tables of their medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::load::LoadResult;
use super::workers::clock_ticks_per_s;
use super::{CONCURRENCY, PAGES, Plan, VARIANTS, Variant};
use crate::util;

#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// The runtime workerd's CPU per request.
    pub(super) cpu_ms: f64,
    /// The proxy workerd's CPU per request.
    pub(super) proxy_cpu_ms: f64,
    pub(super) errors: usize,
}

impl Sample {
    /// `cpu_ticks`: the runtime's and the proxy's CPU time over the cell.
    pub(super) fn of(result: &LoadResult, cpu_ticks: (u64, u64), duration: Duration) -> Sample {
        let mut lat = result.latencies_us.clone();
        lat.sort_unstable();
        let n = lat.len();
        let pct = |p: usize| {
            if n == 0 {
                0.0
            } else {
                f64::from(lat[(n * p / 100).min(n - 1)]) / 1000.0
            }
        };
        let per_request = |ticks: u64| {
            if n == 0 {
                0.0
            } else {
                ticks as f64 * 1000.0 / clock_ticks_per_s() as f64 / n as f64
            }
        };
        Sample {
            rps: n as f64 / duration.as_secs_f64(),
            p50_ms: pct(50),
            p99_ms: pct(99),
            cpu_ms: per_request(cpu_ticks.0),
            proxy_cpu_ms: per_request(cpu_ticks.1),
            errors: result.errors,
        }
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn render(
    plan: &Plan,
    samples: &BTreeMap<(usize, usize, Variant), Vec<Sample>>,
    cold: &BTreeMap<Variant, Vec<f64>>,
    worker_gz: u64,
) -> String {
    let med = |page: usize, c: usize, v: Variant, f: fn(&Sample) -> f64| {
        median(
            samples
                .get(&(page, c, v))
                .map(|s| s.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    let mut out = format!(
        "Same `wrangler dev` (workerd), local mode; the pages come from an upstream on 127.0.0.1 \
         outside workerd. {} interleaved round(s), each restarting the workers; per cell \
         {} s of keep-alive load after {} ms of warm-up; medians over rounds. CPU is the utime + stime \
         per request of the workerd process that runs the worker (`/proc/<pid>/stat`); wrangler's \
         local proxy, a second workerd that forwards each request to it, is shown apart. Attune: release Worker, KV seeded, every response `personalized` (three \
         slots on each page: a variant hero, \"for you\" and trending on the home page; similar, \
         \"for you\" and trending on the product page); the JS worker fills the same slots from \
         the picks Attune made and answers the same bytes (checked each round). \"KV reads\" is a \
         fourth worker that makes the two KV reads Attune makes for a page (manifest and profile) \
         and passes the page through: under `wrangler dev` KV is a simulator inside the same \
         workerd, so its CPU is counted with the worker's, which on Cloudflare it is not.\n\n",
        plan.rounds,
        plan.cell.as_secs_f64(),
        plan.warmup.as_millis()
    );
    out.push_str(
        "| page, concurrency | req/s pass / JS / Attune | Attune ÷ JS | p50 ms pass / JS / Attune | p99 ms pass / JS / Attune | CPU ms/req pass / JS / Attune | proxy CPU ms/req |\n|---|---|---|---|---|---|---|\n",
    );
    let [p, j, a, k] = VARIANTS;
    let mut goals = Vec::new();
    for (page, (page_name, _)) in PAGES.iter().enumerate() {
        for (c, concurrency) in CONCURRENCY.iter().enumerate() {
            let rps = |v| med(page, c, v, |s| s.rps);
            let p50 = |v| med(page, c, v, |s| s.p50_ms);
            let p99 = |v| med(page, c, v, |s| s.p99_ms);
            let cpu = |v| med(page, c, v, |s| s.cpu_ms);
            let proxy = median(
                VARIANTS
                    .iter()
                    .flat_map(|&v| samples.get(&(page, c, v)).into_iter().flatten())
                    .map(|s| s.proxy_cpu_ms)
                    .collect(),
            );
            let _ = writeln!(
                out,
                "| {concurrency}, {page_name} | {:.0} / {:.0} / {:.0} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {proxy:.2} |",
                rps(p),
                rps(j),
                rps(a),
                rps(a) / rps(j),
                p50(p),
                p50(j),
                p50(a),
                p99(p),
                p99(j),
                p99(a),
                cpu(p),
                cpu(j),
                cpu(a),
            );
            goals.push((
                format!("{concurrency}, {page_name}"),
                rps(a) / rps(j),
                cpu(a) / cpu(j),
                p50(a) / p50(p),
                (cpu(a) - cpu(p), cpu(j) - cpu(p), cpu(k) - cpu(p)),
            ));
        }
    }
    out.push_str(
        "\nGoals (issue 17): Attune ≥ 1.2× the JS worker's req/s, ≤ its CPU per request, p50 ≤ 1.3× \
         pass-through.\n\n| page, concurrency | req/s Attune ÷ JS (≥ 1.2) | CPU Attune ÷ JS (≤ 1) | p50 Attune ÷ pass (≤ 1.3) | CPU over pass-through, Attune / JS / KV reads alone (ms) |\n|---|---|---|---|---|\n",
    );
    let mark = |ok: bool| if ok { "" } else { " ✗" };
    for (name, rps, cpu, p50, (extra_a, extra_j, extra_k)) in goals {
        let _ = writeln!(
            out,
            "| {name} | {rps:.2}{} | {cpu:.2}{} | {p50:.2}{} | {extra_a:.2} / {extra_j:.2} / {extra_k:.2} |",
            mark(rps >= 1.2),
            mark(cpu <= 1.0),
            mark(p50 <= 1.3),
        );
    }
    out.push_str(
        "\nFirst request on a fresh isolate (the home page, right after `wrangler dev` says it is \
         ready), ms, median (min–max) over rounds:\n\n| worker | first request |\n|---|---|\n",
    );
    for v in VARIANTS {
        let times = cold.get(&v).cloned().unwrap_or_default();
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.1} ({min:.1}–{max:.1}) |",
            v.name(),
            median(times)
        );
    }
    let _ = writeln!(
        out,
        "\nWorker: `index_bg.wasm` {} gzipped (goal: under 300 KB).",
        util::fmt_bytes(worker_gz)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
