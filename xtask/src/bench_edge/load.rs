//! The load generator: keep-alive connections of std threads, one request after another.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::http::{read_response, request_bytes};
use super::workers::page_headers;

pub(super) struct LoadResult {
    pub(super) latencies_us: Vec<u32>,
    pub(super) errors: usize,
}

/// `concurrency` keep-alive connections, each sending the next request as soon as the last
/// response has been read, for `duration`. `check`: a response must be `x-attune:
/// personalized` to count (anything else is an error).
pub(super) fn load(
    port: u16,
    path: &str,
    concurrency: usize,
    duration: Duration,
    check: bool,
) -> Result<LoadResult> {
    let request = Arc::new(request_bytes(port, "GET", path, &page_headers(), b""));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let request = Arc::clone(&request);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                                conn = Some(BufReader::new(s));
                            }
                            Err(_) => {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let started = Instant::now();
                    let reply = c
                        .get_mut()
                        .write_all(&request)
                        .and_then(|()| read_response(c));
                    let elapsed = started.elapsed();
                    match reply {
                        Ok(r) => {
                            let ok = r.status == 200
                                && (!check
                                    || r.header("x-attune")
                                        .is_some_and(|h| h.starts_with("personalized")));
                            if ok && !stop.load(Ordering::Relaxed) {
                                latencies
                                    .push(elapsed.as_micros().min(u128::from(u32::MAX)) as u32);
                            } else if !ok {
                                errors += 1;
                            }
                            if r.close {
                                conn = None;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut result = LoadResult {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        result.latencies_us.extend(l);
        result.errors += e;
    }
    Ok(result)
}
