//! `import-retail` and `replay`: turning the Online Retail sample into events and a catalog,
//! and feeding event files either to a running server (`--url`) or straight into the data
//! directory's log and store.
//!
//! Mapping (documented for the demo):
//! - every non-cancelled invoice line → one `purchase` event of the customer (guests:
//!   `guest:<invoice>`), `event_id` = `or:<invoice>:<line>` (stable, so re-imports dedup),
//!   props `{"qty", "invoice", "country"}`;
//! - with `--derive-views`, one `view` 2 minutes before each purchase, props
//!   `{"derived": true}`;
//! - cancelled invoices (`C…`) produce **no event** (the profile math has no "unpurchase");
//!   they are counted and reported;
//! - timestamps shift so the last invoice lands 1 hour before now (`--no-shift` keeps them).

use std::time::Duration;

use attune_core::event::{Event, PropValue, SCHEMA_VERSION};
use attune_core::{CatalogItem, EventKind, SmolStr};

use crate::error::{Error, Result};
use crate::retail::{RetailDataset, RetailItem};

/// Events and catalog derived from the sample.
#[derive(Debug, Clone)]
pub struct Imported {
    pub events: Vec<Event>,
    pub catalog: Vec<CatalogItem>,
    pub cancelled_invoices: usize,
    pub shift_ms: i64,
}

pub fn catalog_item(item: &RetailItem) -> CatalogItem {
    CatalogItem {
        id: item.id.clone(),
        title: item.title.clone(),
        url: item.url.clone(),
        image: item.image.clone(),
        price: format!("£{:.2}", item.price),
        category: item.category.clone(),
    }
}

/// Converts the data set. `now` anchors the shift; `full_catalog` publishes every item rather
/// than the demo shop's pages only.
pub fn from_retail(
    ds: &RetailDataset,
    now: u64,
    shift: bool,
    derive_views: bool,
    full_catalog: bool,
) -> Imported {
    let last = ds.invoices.iter().map(|i| i.ts_ms).max().unwrap_or(0);
    let shift_ms = if shift {
        (now as i64 - 3_600_000) - last
    } else {
        0
    };
    let mut events = Vec::new();
    let mut cancelled = 0;
    for inv in &ds.invoices {
        if inv.cancelled {
            cancelled += 1;
            continue;
        }
        let user = SmolStr::new(
            inv.customer
                .clone()
                .unwrap_or_else(|| format!("guest:{}", inv.no)),
        );
        let ts = (inv.ts_ms + shift_ms).max(0) as u64;
        for (n, (item, qty, _price)) in inv.lines.iter().enumerate() {
            if derive_views {
                let mut props = attune_core::event::Props::new();
                props.insert("derived".into(), PropValue::Bool(true));
                events.push(Event {
                    v: SCHEMA_VERSION,
                    event_id: format!("or:{}:{n}:v", inv.no).into(),
                    user: user.clone(),
                    ts: ts.saturating_sub(120_000),
                    kind: EventKind::View,
                    item: Some(SmolStr::new(item)),
                    props,
                });
            }
            let mut props = attune_core::event::Props::new();
            props.insert("qty".into(), PropValue::Int(*qty));
            props.insert("invoice".into(), PropValue::Str(inv.no.clone()));
            props.insert("country".into(), PropValue::Str(inv.country.clone()));
            events.push(Event {
                v: SCHEMA_VERSION,
                event_id: format!("or:{}:{n}", inv.no).into(),
                user: user.clone(),
                ts,
                kind: EventKind::Purchase,
                item: Some(SmolStr::new(item)),
                props,
            });
        }
    }
    events.sort_by_key(|e| e.ts);
    let catalog = if full_catalog {
        ds.items.iter().map(catalog_item).collect()
    } else {
        crate::retail::shop::page_items(ds)
            .into_iter()
            .map(catalog_item)
            .collect()
    };
    Imported {
        events,
        catalog,
        cancelled_invoices: cancelled,
        shift_ms,
    }
}

pub fn load_retail(path: &std::path::Path) -> Result<RetailDataset> {
    let f =
        std::fs::File::open(path).map_err(|e| Error::Retail(format!("{}: {e}", path.display())))?;
    crate::retail::parse(std::io::BufReader::new(f)).map_err(|e| Error::Retail(e.to_string()))
}

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
                        return Err(Error::Http(format!("{status}: {text}")));
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
