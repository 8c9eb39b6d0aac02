//! Where snapshots go: Cloudflare's KV bulk API, the Worker's dev route (same shape), a
//! directory, or nowhere; and how one bulk request is sent.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::Pair;
use crate::config::{Config, TargetKind};
use crate::error::{Error, Result};

#[derive(Serialize)]
pub(super) struct BulkItem<'a> {
    pub(super) key: &'a str,
    pub(super) value: String,
    pub(super) base64: bool,
    pub(super) metadata: serde_json::Value,
}

/// Why a request failed.
#[derive(Debug)]
pub struct SendError {
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub reason: &'static str,
    pub message: String,
}

/// Where snapshots go.
#[derive(Debug, Clone)]
pub enum Target {
    None,
    /// Cloudflare REST or the worker's dev route: same shape, different base URL.
    Http {
        client: reqwest::Client,
        base: String,
        token: String,
    },
    Dir(PathBuf),
}

impl Target {
    pub fn from_config(cfg: &Config) -> Result<Target> {
        let p = &cfg.publish;
        let client = || {
            reqwest::Client::builder()
                .timeout(Duration::from_millis(p.request_timeout_ms))
                .build()
                .map_err(Error::from)
        };
        Ok(match cfg.target() {
            TargetKind::None | TargetKind::Auto => Target::None,
            TargetKind::Http => Target::Http {
                client: client()?,
                base: p
                    .url
                    .clone()
                    .ok_or_else(|| Error::Config("publish.url is required".into()))?
                    .trim_end_matches('/')
                    .to_string(),
                token: p.token.clone().unwrap_or_default(),
            },
            TargetKind::Cloudflare => {
                let (Some(a), Some(n)) = (&p.cloudflare_account_id, &p.cloudflare_namespace_id)
                else {
                    return Err(Error::Config(
                        "cloudflare target needs account and namespace ids".into(),
                    ));
                };
                Target::Http {
                    client: client()?,
                    base: format!(
                        "{}/accounts/{a}/storage/kv/namespaces/{n}",
                        p.cloudflare_api.trim_end_matches('/')
                    ),
                    token: p.token.clone().unwrap_or_default(),
                }
            }
            TargetKind::Dir => {
                Target::Dir(p.dir.clone().unwrap_or_else(|| cfg.data_dir.join("kv")))
            }
        })
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Target::None)
    }

    pub fn describe(&self) -> String {
        match self {
            Target::None => "none".into(),
            Target::Http { base, .. } => base.clone(),
            Target::Dir(d) => format!("dir:{}", d.display()),
        }
    }

    async fn send_http(
        client: &reqwest::Client,
        req: reqwest::RequestBuilder,
    ) -> std::result::Result<(), SendError> {
        let _ = client;
        let resp = req.send().await.map_err(|e| SendError {
            retryable: true,
            retry_after: None,
            reason: if e.is_timeout() { "timeout" } else { "connect" },
            message: e.to_string(),
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            // Cloudflare answers 200 with success=false on some errors.
            let ok = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("success").and_then(|s| s.as_bool()))
                .unwrap_or(true);
            if ok {
                return Ok(());
            }
            return Err(SendError {
                retryable: true,
                retry_after,
                reason: "unsuccessful",
                message: body.chars().take(300).collect(),
            });
        }
        let code = status.as_u16();
        Err(SendError {
            retryable: code == 429 || code == 408 || status.is_server_error(),
            retry_after,
            reason: if code == 429 {
                "429"
            } else if status.is_server_error() {
                "5xx"
            } else {
                "4xx"
            },
            message: format!("{status}: {}", body.chars().take(300).collect::<String>()),
        })
    }

    pub async fn put(&self, pairs: &[Pair]) -> std::result::Result<(), SendError> {
        match self {
            Target::None => Ok(()),
            Target::Http {
                client,
                base,
                token,
            } => {
                let body: Vec<BulkItem<'_>> = pairs
                    .iter()
                    .map(|p| BulkItem {
                        key: &p.key,
                        value: B64.encode(&p.value),
                        base64: true,
                        metadata: serde_json::json!({ "v": p.version }),
                    })
                    .collect();
                let req = client
                    .put(format!("{base}/bulk"))
                    .bearer_auth(token)
                    .json(&body);
                Self::send_http(client, req).await
            }
            Target::Dir(dir) => {
                let io = |e: std::io::Error| SendError {
                    retryable: true,
                    retry_after: None,
                    reason: "io",
                    message: e.to_string(),
                };
                std::fs::create_dir_all(dir).map_err(io)?;
                for p in pairs {
                    let name = p.key.replace(':', "_");
                    let tmp = dir.join(format!(".{name}.tmp"));
                    std::fs::write(&tmp, &p.value).map_err(io)?;
                    std::fs::rename(&tmp, dir.join(&name)).map_err(io)?;
                    std::fs::write(
                        dir.join(format!("{name}.meta.json")),
                        format!("{{\"v\":{}}}", p.version),
                    )
                    .map_err(io)?;
                }
                Ok(())
            }
        }
    }

    pub async fn delete(&self, keys: &[String]) -> std::result::Result<(), SendError> {
        match self {
            Target::None => Ok(()),
            Target::Http {
                client,
                base,
                token,
            } => {
                let req = client
                    .post(format!("{base}/bulk/delete"))
                    .bearer_auth(token)
                    .json(keys);
                Self::send_http(client, req).await
            }
            Target::Dir(dir) => {
                for k in keys {
                    let name = k.replace(':', "_");
                    let _ = std::fs::remove_file(dir.join(&name));
                    let _ = std::fs::remove_file(dir.join(format!("{name}.meta.json")));
                }
                Ok(())
            }
        }
    }
}
