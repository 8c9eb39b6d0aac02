//! A client of a running origin's HTTP API (`--url` on the CLI), and the request bodies event
//! files are sent in.

use std::time::Duration;

use attune_core::CatalogItem;

use crate::error::{Error, Result};

/// A client of a running server's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends one request, retrying 429 (honouring `Retry-After`), 5xx and connection errors.
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let mut attempt = 0u32;
        loop {
            let wait = match self.auth(make()).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let ra = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null));
                    }
                    if status.as_u16() != 429 && !status.is_server_error() {
                        return Err(Error::Status { status, body: text });
                    }
                    Duration::from_millis(ra.map_or(200 << attempt.min(6), |s| s * 1000))
                }
                Err(e) if attempt < 30 => {
                    tracing::debug!(error = %e, "request failed, retrying");
                    Duration::from_millis(200 << attempt.min(5))
                }
                Err(e) => return Err(e.into()),
            };
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn post_events(&self, source: &str, ndjson: Vec<u8>) -> Result<serde_json::Value> {
        let url = format!("{}/v1/events?source={source}", self.base);
        self.send(|| {
            self.http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(ndjson.clone())
        })
        .await
    }

    pub async fn put_catalog(&self, items: &[CatalogItem]) -> Result<serde_json::Value> {
        let url = format!("{}/v1/catalog", self.base);
        self.send(|| self.http.put(&url).json(items)).await
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.send(|| self.http.get(&url)).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.send(|| self.http.delete(&url)).await
    }

    pub async fn post(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.send(|| self.http.post(&url)).await
    }
}

/// Splits JSONL lines into request bodies of at most `batch` events and ~900 KiB.
pub fn chunk_lines(lines: &[Vec<u8>], batch: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0;
    for l in lines {
        if n > 0 && (n >= batch || cur.len() + l.len() > 900 * 1024) {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
        cur.extend_from_slice(l);
        cur.push(b'\n');
        n += 1;
    }
    if n > 0 {
        out.push(cur);
    }
    out
}
