//! Where snapshots go: Cloudflare's KV bulk API, the Worker's dev route (same shape), a
//! directory, or nowhere; and how one bulk request is sent.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::Pair;
use super::budget::{RateInfo, rate_info};
use crate::config::{Config, TargetKind};
use crate::error::{Error, Result};

#[derive(Serialize)]
pub(super) struct BulkItem<'a> {
    pub(super) key: &'a str,
    pub(super) value: String,
    pub(super) base64: bool,
    pub(super) metadata: serde_json::Value,
}

/// Why a request failed. `reason` is the metric label: `auth` (401/403), `rate-limited`
/// (429), `server` (5xx, or a 200 that says `success: false`), `network` (connect, timeout),
/// `bad-request` (another 4xx), `io` (directory target).
#[derive(Debug)]
pub struct SendError {
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub rate: Option<RateInfo>,
    pub reason: &'static str,
    pub message: String,
}

impl SendError {
    /// The token is wrong or lacks the permission: nothing gets through until an operator acts.
    pub fn is_auth(&self) -> bool {
        self.reason == "auth"
    }
}

/// What an accepted request said.
#[derive(Debug, Default)]
pub struct Sent {
    /// Keys the bulk API listed in `unsuccessful_keys`: not written, to be sent again.
    pub rejected: Vec<String>,
    pub rate: Option<RateInfo>,
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

    /// Requests to this target count against the API budget (the directory and no target
    /// make none).
    pub fn is_http(&self) -> bool {
        matches!(self, Target::Http { .. })
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

    async fn send_http(req: reqwest::RequestBuilder) -> std::result::Result<Sent, SendError> {
        let resp = req.send().await.map_err(|e| SendError {
            retryable: true,
            retry_after: None,
            rate: None,
            reason: "network",
            message: e.to_string(),
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let rate = rate_info(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
            // Cloudflare answers 200 with success=false on some errors.
            let ok = parsed
                .as_ref()
                .and_then(|v| v.get("success").and_then(|s| s.as_bool()))
                .unwrap_or(true);
            if ok {
                let rejected = parsed
                    .as_ref()
                    .and_then(|v| v.pointer("/result/unsuccessful_keys"))
                    .and_then(|v| v.as_array())
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Sent { rejected, rate });
            }
            return Err(SendError {
                retryable: true,
                retry_after,
                rate,
                reason: "server",
                message: body.chars().take(300).collect(),
            });
        }
        let code = status.as_u16();
        Err(SendError {
            retryable: code == 429 || code == 408 || status.is_server_error(),
            retry_after,
            rate,
            reason: match code {
                401 | 403 => "auth",
                429 => "rate-limited",
                408 => "network",
                _ if status.is_server_error() => "server",
                _ => "bad-request",
            },
            message: format!("{status}: {}", body.chars().take(300).collect::<String>()),
        })
    }

    pub async fn put(&self, pairs: &[Pair]) -> std::result::Result<Sent, SendError> {
        match self {
            Target::None => Ok(Sent::default()),
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
                Self::send_http(req).await
            }
            Target::Dir(dir) => {
                let io = |e: std::io::Error| SendError {
                    retryable: true,
                    retry_after: None,
                    rate: None,
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
                Ok(Sent::default())
            }
        }
    }

    pub async fn delete(&self, keys: &[String]) -> std::result::Result<Sent, SendError> {
        match self {
            Target::None => Ok(Sent::default()),
            Target::Http {
                client,
                base,
                token,
            } => {
                let req = client
                    .post(format!("{base}/bulk/delete"))
                    .bearer_auth(token)
                    .json(keys);
                Self::send_http(req).await
            }
            Target::Dir(dir) => {
                for k in keys {
                    let name = k.replace(':', "_");
                    let _ = std::fs::remove_file(dir.join(&name));
                    let _ = std::fs::remove_file(dir.join(format!("{name}.meta.json")));
                }
                Ok(Sent::default())
            }
        }
    }
}

/// Refuses a Cloudflare target that cannot work or would publish guessable keys: no token, or
/// the built-in profile key (public, so anyone can compute a user's `p:` key, and it never
/// matches a deployed Worker's secret). `publish.allow_dev_secrets` allows both, for a stand-in
/// of the API.
pub fn check_start(cfg: &Config) -> Result<()> {
    if cfg.target() != TargetKind::Cloudflare || cfg.publish.allow_dev_secrets {
        return Ok(());
    }
    if cfg
        .publish
        .token
        .as_deref()
        .is_none_or(|t| t.trim().is_empty())
    {
        return Err(Error::Config(
            "the Cloudflare KV target needs an API token (CLOUDFLARE_API_TOKEN or \
             publish.token); --allow-dev-secrets skips this check for a local stand-in"
                .into(),
        ));
    }
    if cfg.profile_key == crate::config::DEV_PROFILE_KEY {
        return Err(Error::Config(
            "the Cloudflare KV target needs the Worker's profile key (ATTUNE_PROFILE_KEY or \
             profile_key), not the built-in dev key; --allow-dev-secrets skips this check"
                .into(),
        ));
    }
    Ok(())
}

/// The settings that lost to the resolved target (`publish.url` wins over Cloudflare ids,
/// which win over `publish.dir`), for the start-up log line.
pub fn overridden(cfg: &Config) -> Vec<&'static str> {
    let p = &cfg.publish;
    let cloudflare = p.cloudflare_account_id.is_some() || p.cloudflare_namespace_id.is_some();
    let mut lost = Vec::new();
    match cfg.target() {
        TargetKind::Http => {
            if cloudflare {
                lost.push("cloudflare account/namespace ids");
            }
            if p.dir.is_some() {
                lost.push("publish.dir (ATTUNE_KV_DIR)");
            }
        }
        TargetKind::Cloudflare => {
            if p.url.is_some() {
                lost.push("publish.url (ATTUNE_KV_URL)");
            }
            if p.dir.is_some() {
                lost.push("publish.dir (ATTUNE_KV_DIR)");
            }
        }
        TargetKind::Dir => {
            if p.url.is_some() {
                lost.push("publish.url (ATTUNE_KV_URL)");
            }
            if cloudflare {
                lost.push("cloudflare account/namespace ids");
            }
        }
        TargetKind::None | TargetKind::Auto => {
            if p.url.is_some() {
                lost.push("publish.url (ATTUNE_KV_URL)");
            }
            if cloudflare {
                lost.push("cloudflare account/namespace ids");
            }
            if p.dir.is_some() {
                lost.push("publish.dir (ATTUNE_KV_DIR)");
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloudflare() -> Config {
        let mut cfg = Config::default();
        cfg.publish.target = TargetKind::Cloudflare;
        cfg.publish.cloudflare_account_id = Some("a".into());
        cfg.publish.cloudflare_namespace_id = Some("n".into());
        cfg.publish.token = Some("t".into());
        cfg.profile_key = "the worker's secret".into();
        cfg
    }

    #[test]
    fn a_url_that_wins_over_cloudflare_ids_is_named() {
        let mut cfg = cloudflare();
        cfg.publish.url = Some("http://127.0.0.1:8787/__attune/kv".into());
        cfg.publish.target = TargetKind::Http;
        assert_eq!(overridden(&cfg), ["cloudflare account/namespace ids"]);
        assert!(overridden(&cloudflare()).is_empty());
    }

    #[test]
    fn cloudflare_needs_a_token_and_the_workers_profile_key() {
        assert!(check_start(&cloudflare()).is_ok());
        let mut cfg = cloudflare();
        cfg.publish.token = Some(" ".into());
        assert!(check_start(&cfg).is_err());
        let mut cfg = cloudflare();
        cfg.profile_key = crate::config::DEV_PROFILE_KEY.into();
        assert!(check_start(&cfg).is_err());
        cfg.publish.allow_dev_secrets = true;
        assert!(check_start(&cfg).is_ok());
        // The dev route is not checked (the demo publishes there with the dev key).
        let mut cfg = Config::default();
        cfg.publish.url = Some("http://127.0.0.1:8787/__attune/kv".into());
        assert!(check_start(&cfg).is_ok());
    }
}
