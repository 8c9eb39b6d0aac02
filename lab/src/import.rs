//! `import-retail`: turning the Online Retail sample into events and a catalog (loaded like
//! `attune-origin replay` loads an event file: to a running server with `--url`, or straight
//! into the data directory's log and store).
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
    let f = std::fs::File::open(path).map_err(|source| Error::SampleFile {
        path: path.to_path_buf(),
        source,
    })?;
    crate::retail::parse(std::io::BufReader::new(f)).map_err(|source| Error::Sample {
        path: path.to_path_buf(),
        source,
    })
}
