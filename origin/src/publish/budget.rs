//! The request budget: a token bucket shared by every request the origin makes to the KV API.
//!
//! Cloudflare allows 1,200 API requests per 5 minutes per user token, across every API call of
//! that user, and answers 429 to all of them for the rest of the window once it is exceeded. A
//! bucket of `burst` tokens refilled at `requests / window` never sends more than
//! `burst + requests` in any window, so the defaults (1,000 per 5 minutes, burst 50) stay well
//! inside the limit. The server's own view (`Ratelimit` headers, `Retry-After`) can only make
//! it slower.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared token bucket.
#[derive(Debug)]
pub struct Budget {
    per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    /// No request before this (a 429's `Retry-After`, or the server says the window is spent).
    blocked_until: Option<Instant>,
}

/// What the server said about its remaining budget (`Ratelimit: "default";r=…;t=…`, or the
/// older `Ratelimit-Remaining` / `Ratelimit-Reset` pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub remaining: u64,
    pub reset: Duration,
}

/// Requests the server must still have left before the bucket stops trusting its own count.
const SERVER_MARGIN: u64 = 2;

impl Budget {
    pub fn new(requests: u64, window: Duration, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Budget {
            per_second: requests.max(1) as f64 / window.as_secs_f64().max(0.001),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                at: Instant::now(),
                blocked_until: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token, or says how long to wait before asking again.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        if let Some(until) = s.blocked_until {
            if now < until {
                return Err(until - now);
            }
            s.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.per_second).min(self.burst);
        s.at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.tokens) / self.per_second))
        }
    }

    /// No request before `until` (a 429 blocks the whole account, not one key).
    pub fn block_until(&self, until: Instant) {
        let mut s = self.lock();
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Slows down to what the server says is left: never more tokens than it has, and nothing
    /// until its reset once only the margin is left.
    pub fn observe(&self, info: RateInfo, now: Instant) {
        if info.remaining <= SERVER_MARGIN {
            self.block_until(now + info.reset);
            let mut s = self.lock();
            s.tokens = 0.0;
            s.at = now;
            return;
        }
        let mut s = self.lock();
        s.tokens = s.tokens.min((info.remaining - SERVER_MARGIN) as f64);
    }
}

/// Reads the server's rate-limit headers, if any.
pub fn rate_info(headers: &reqwest::header::HeaderMap) -> Option<RateInfo> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(v) = text("ratelimit") {
        let mut remaining = None;
        let mut reset = None;
        for part in v.split([';', ',']) {
            let part = part.trim();
            if let Some(r) = part.strip_prefix("r=") {
                remaining = r.trim().parse::<u64>().ok();
            } else if let Some(t) = part.strip_prefix("t=") {
                reset = t.trim().parse::<u64>().ok();
            }
        }
        if let (Some(remaining), Some(reset)) = (remaining, reset) {
            return Some(RateInfo {
                remaining,
                reset: Duration::from_secs(reset),
            });
        }
    }
    let remaining = text("ratelimit-remaining")?.trim().parse().ok()?;
    let reset = text("ratelimit-reset")?.trim().parse().ok()?;
    Some(RateInfo {
        remaining,
        reset: Duration::from_secs(reset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_burst_plus_rate_times_window() {
        let b = Budget::new(10, Duration::from_secs(5), 4);
        let start = Instant::now();
        let mut sent = 0;
        // Ask every 10 ms for 5 s.
        for i in 0..500 {
            if b.try_take(start + Duration::from_millis(i * 10)).is_ok() {
                sent += 1;
            }
        }
        assert!(sent <= 4 + 10, "{sent}");
        assert!(sent >= 12, "{sent}");
    }

    #[test]
    fn a_block_and_a_spent_server_window_stop_requests() {
        let b = Budget::new(1000, Duration::from_secs(1), 100);
        let now = Instant::now();
        b.block_until(now + Duration::from_secs(2));
        assert!(b.try_take(now + Duration::from_secs(1)).is_err());
        assert!(b.try_take(now + Duration::from_secs(2)).is_ok());
        let now = now + Duration::from_secs(2);
        b.observe(
            RateInfo {
                remaining: 1,
                reset: Duration::from_secs(30),
            },
            now,
        );
        assert!(b.try_take(now + Duration::from_secs(29)).is_err());
        assert!(b.try_take(now + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn reads_both_header_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("ratelimit", "\"default\";r=50;t=30".parse().unwrap());
        assert_eq!(
            rate_info(&h),
            Some(RateInfo {
                remaining: 50,
                reset: Duration::from_secs(30)
            })
        );
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("ratelimit-remaining", "7".parse().unwrap());
        h.insert("ratelimit-reset", "12".parse().unwrap());
        assert_eq!(rate_info(&h).map(|i| i.remaining), Some(7));
        assert_eq!(rate_info(&reqwest::header::HeaderMap::new()), None);
    }
}
