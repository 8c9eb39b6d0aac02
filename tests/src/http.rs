//! Talking to the stack as a browser or a beacon would: a client that never follows
//! redirects, replies reduced to what the tests look at, and a visitor that keeps its cookies.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::Result;

/// A blocking HTTP client that never follows redirects and never treats a status as an error.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A response reduced to what the tests look at.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `name=value` pairs from `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<(String, String)> {
        self.headers
            .get("set-cookie")
            .into_iter()
            .flatten()
            .filter_map(|c| {
                c.split(';')
                    .next()?
                    .split_once('=')
                    .map(|(k, v)| (k.trim().into(), v.trim().into()))
            })
            .collect()
    }
}

pub fn reply(resp: ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in resp.headers() {
        headers
            .entry(k.as_str().to_ascii_lowercase())
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    let mut body = Vec::new();
    resp.into_body().into_reader().read_to_end(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A browser-like visitor: keeps the cookies the edge sets.
#[derive(Debug)]
pub struct Visitor {
    pub base: String,
    pub cookies: BTreeMap<String, String>,
    pub user_agent: String,
    agent: ureq::Agent,
}

impl Visitor {
    pub fn new(base: &str) -> Self {
        Visitor {
            base: base.trim_end_matches('/').into(),
            cookies: BTreeMap::new(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36".into(),
            agent: http(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&mut self, r: &Reply) {
        for (k, v) in r.set_cookies() {
            if v.is_empty() {
                self.cookies.remove(&k);
            } else {
                self.cookies.insert(k, v);
            }
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Reply> {
        self.get_with(path, &[])
    }

    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("user-agent", &self.user_agent);
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = reply(req.call()?)?;
        self.remember(&r);
        Ok(r)
    }

    pub fn post(&mut self, path: &str, body: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("user-agent", &self.user_agent);
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = reply(req.send(body)?)?;
        self.remember(&r);
        Ok(r)
    }
}
