//! One page request as a sans-IO state machine: the Worker shell (`worker_shell.rs`) does the
//! I/O (upstream fetch, KV reads, the clock, streaming) and tells a [`Page`] what happened; the
//! page answers with what to do next and, at the end, the response's outcome, identity,
//! segments and headers. Nothing here awaits, so every decision is tested natively.
//!
//! The order of events, as the shell drives it:
//!
//! 1. [`Page::start`] with the request's facts: a bypass (pass the upstream through), or a
//!    page with its visitor id, identity and session; the shell starts the KV reads for
//!    [`Page::profile_key`] and fetches the upstream.
//! 2. [`Page::on_upstream`] with the upstream's status and headers: a bypass, or go on.
//! 3. [`Page::on_loaded`] with the data read within [`Page::wait_ms`] (or nothing, out of
//!    time); when the upstream named a logged-in user, it asks for that user's profile, given
//!    to [`Page::on_profile`].
//! 4. [`Page::rewrite`]: the rewriter's inputs.
//! 5. [`Page::response_headers`] once the first chunk went through (it names the page's item,
//!    which joins the session cookie sent with these headers).

use std::rc::Rc;

use attune_core::rules::DeviceClass;
use attune_core::session::{self, DEFAULT_GAP_MS};
use attune_core::{Millis, Profile, Session};

use crate::cookies;
use crate::data::{Fallback, Model};
use crate::escape::Charset;
use crate::headers::{Debug, Outcome, ProfileState, Timing, header_json};
use crate::identity::{self, Identity};
use crate::policy::{self, RequestFacts};
use crate::rewrite::{Inputs, Report};

/// The Worker's settings, from its vars and secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `ATTUNE_UPSTREAM`: the site origin, without a trailing `/`; empty: the assets binding.
    pub upstream: String,
    /// `ATTUNE_ORIGIN_INGEST_URL`: where events are forwarded; empty: not forwarded.
    pub ingest_url: String,
    /// `ATTUNE_INGEST_TOKEN`: bearer token for the ingest.
    pub ingest_token: String,
    /// `ATTUNE_BUDGET_MS`: how long a page waits for KV (default 50).
    pub budget_ms: u64,
    /// `ATTUNE_DEMO_LOGIN=1`: the demo's login routes and cookie.
    pub demo_login: bool,
    /// `ATTUNE_SESSION_KEY`: signs the session cookie; empty: no session.
    pub session_key: String,
    /// `ATTUNE_PROFILE_KEY`: keys the profile hash; empty: no profile reads.
    pub profile_key: String,
    /// `ATTUNE_DEBUG_TOKEN`: enables the debug view; empty: disabled.
    pub debug_token: String,
    /// `ATTUNE_DEV_KV_TOKEN`: enables the dev bulk KV route; empty: disabled.
    pub dev_kv_token: String,
    /// `ATTUNE_HTML_TTL`: seconds the shared cache keeps an upstream page that came without
    /// cache headers (when nothing in the request or response forbids a shared copy). Unset or
    /// `0`: such pages are not cached.
    pub html_ttl_s: Option<u64>,
}

/// `ATTUNE_BUDGET_MS` when unset or not a number.
pub const DEFAULT_BUDGET_MS: u64 = 50;

impl Settings {
    /// Reads every setting through `lookup` (a var or secret by name; `None` when unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let text = |name: &str| lookup(name).unwrap_or_default();
        let number = |name: &str| text(name).trim().parse::<u64>().ok();
        Settings {
            upstream: text("ATTUNE_UPSTREAM")
                .trim()
                .trim_end_matches('/')
                .to_owned(),
            ingest_url: text("ATTUNE_ORIGIN_INGEST_URL").trim().to_owned(),
            ingest_token: text("ATTUNE_INGEST_TOKEN"),
            budget_ms: number("ATTUNE_BUDGET_MS").unwrap_or(DEFAULT_BUDGET_MS),
            demo_login: text("ATTUNE_DEMO_LOGIN").trim() == "1",
            session_key: text("ATTUNE_SESSION_KEY"),
            profile_key: text("ATTUNE_PROFILE_KEY"),
            debug_token: text("ATTUNE_DEBUG_TOKEN"),
            dev_kv_token: text("ATTUNE_DEV_KV_TOKEN"),
            html_ttl_s: number("ATTUNE_HTML_TTL").filter(|&s| s > 0),
        }
    }

    /// Whether `token` (an `x-attune-debug` header) is the debug token, in constant time.
    pub fn debug_allowed(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| {
            attune_core::secret::tokens_match(self.debug_token.as_bytes(), t.as_bytes())
        })
    }
}

/// Upstream response headers a personalized page drops: its length and validators describe
/// other bytes, its encoding is undone by the runtime, its caching is replaced by Attune's
/// (the page is now the visitor's own), and `x-attune-user` is for the edge only.
pub const STRIP_ON_REWRITE: &[&str] = &[
    "content-length",
    "etag",
    "x-attune-user",
    "content-encoding",
    "cache-control",
];

/// Upstream response headers a passed-through response drops.
pub const STRIP_ON_PASS_THROUGH: &[&str] = &["x-attune-user"];

/// The `Cache-Control` of a personalized page: the visitor's own, revalidated every time.
pub const PERSONALIZED_CACHE_CONTROL: &str = "private, no-cache";

/// What the shell read from the request.
#[derive(Clone, Debug, Default)]
pub struct PageRequest<'a> {
    pub method: &'a str,
    pub range: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub sec_gpc: Option<&'a str>,
    pub cookie: Option<&'a str>,
    /// The `x-attune-debug` header.
    pub debug_token: Option<&'a str>,
    /// Cloudflare's country of the request.
    pub country: Option<String>,
}

/// What the shell read from the upstream's response head.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpstreamHead<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// `x-attune-user`: the logged-in user the upstream names.
    pub user: Option<&'a str>,
}

/// A profile read from KV.
#[derive(Debug)]
pub enum ProfileRead {
    Found(Box<Profile>, u64),
    Missing,
    /// Not read (no profile key configured, or no model to rank with).
    Skipped,
    Failed(Fallback),
}

impl ProfileRead {
    fn state(&self) -> ProfileState {
        match self {
            ProfileRead::Found(_, v) => ProfileState::Version(*v),
            ProfileRead::Missing => ProfileState::Missing,
            ProfileRead::Skipped => ProfileState::Skipped,
            ProfileRead::Failed(f) => ProfileState::Failed(f.code()),
        }
    }
}

/// The shared model and the visitor's profile, read together.
#[derive(Debug)]
pub struct Loaded {
    pub model: Result<Rc<Model>, Fallback>,
    pub profile: ProfileRead,
}

/// A page being served.
#[derive(Debug)]
pub struct Page<'s> {
    settings: &'s Settings,
    started: Millis,
    visitor_id: String,
    who: Identity,
    /// The upstream named another identity than the request's: its profile is read again.
    switched: bool,
    session: Option<Session>,
    set_cookies: Vec<String>,
    debug: bool,
    country: Option<String>,
    device: DeviceClass,
    charset: Charset,
    model: Result<Rc<Model>, Fallback>,
    profile: ProfileRead,
    profile_state: ProfileState,
    outcome: Outcome,
    segments: Vec<String>,
    upstream_ms: Option<u64>,
    kv_started: Option<Millis>,
    kv_ms: Option<u64>,
}

impl<'s> Page<'s> {
    /// Starts a page: `Err` with the bypass when Attune must leave it alone (no cookies, no
    /// lookups). `new_visitor_id` is called when the request has no valid `attune_vid`.
    pub fn start(
        req: &PageRequest<'_>,
        settings: &'s Settings,
        now: Millis,
        new_visitor_id: impl FnOnce() -> String,
    ) -> Result<Self, Outcome> {
        let facts = RequestFacts {
            method: req.method,
            range: req.range,
            cache_control: req.cache_control,
            user_agent: req.user_agent,
            sec_gpc: req.sec_gpc,
            consent_cookie: cookies::get(req.cookie, cookies::CONSENT),
        };
        if let Some(b) = policy::request_bypass(&facts) {
            return Err(Outcome::Bypass(b));
        }
        let mut set_cookies = Vec::new();
        let (visitor_id, who) = identify(req.cookie, settings, &mut set_cookies, new_visitor_id);
        let session = (!settings.session_key.is_empty()).then(|| {
            session::decode_cookie(
                cookies::get(req.cookie, cookies::SESSION),
                settings.session_key.as_bytes(),
                now,
                DEFAULT_GAP_MS,
            )
        });
        Ok(Page {
            settings,
            started: now,
            visitor_id,
            who,
            switched: false,
            session,
            set_cookies,
            debug: settings.debug_allowed(req.debug_token),
            country: req.country.clone(),
            device: DeviceClass::from_user_agent(req.user_agent.unwrap_or("")),
            charset: Charset::default(),
            model: Err(Fallback::NoData),
            profile: ProfileRead::Skipped,
            profile_state: ProfileState::Skipped,
            outcome: Outcome::Default(Fallback::NoData.code()),
            segments: Vec::new(),
            upstream_ms: None,
            kv_started: None,
            kv_ms: None,
        })
    }

    /// The KV key of the current identity's profile (`None`: no profile key configured).
    pub fn profile_key(&self) -> Option<String> {
        (!self.settings.profile_key.is_empty())
            .then(|| self.who.profile_key(self.settings.profile_key.as_bytes()))
    }

    pub fn identity(&self) -> &Identity {
        &self.who
    }

    /// The upstream's response head: `Some` bypass when it is passed through untouched.
    pub fn on_upstream(&mut self, head: &UpstreamHead<'_>, now: Millis) -> Option<Outcome> {
        self.upstream_ms = Some(now.saturating_sub(self.started));
        if let Some(b) = policy::response_bypass(
            head.status,
            head.content_type,
            head.cache_control,
            head.content_encoding,
        ) {
            self.outcome = Outcome::Bypass(b);
            return Some(self.outcome);
        }
        self.charset = Charset::of_content_type(head.content_type);
        if let Some(user) = head.user {
            let logged_in = identity::resolve(Some(user), &self.visitor_id);
            if logged_in != self.who {
                self.who = logged_in;
                self.switched = true;
            }
        }
        self.kv_started = Some(now);
        None
    }

    /// What is left of the budget for waiting on data.
    pub fn wait_ms(&self, now: Millis) -> u64 {
        self.settings
            .budget_ms
            .saturating_sub(now.saturating_sub(self.started))
    }

    /// The data read for the request's identity: `None` when it did not arrive in time
    /// (`kv_bound`: a KV binding exists, so the read was started) or could not be read.
    /// Answers whether the profile must be read again for the identity the upstream named
    /// (with [`profile_key`](Self::profile_key), within [`wait_ms`](Self::wait_ms)).
    pub fn on_loaded(&mut self, loaded: Option<Loaded>, kv_bound: bool) -> bool {
        match loaded {
            Some(l) => {
                self.model = l.model;
                self.profile = l.profile;
            }
            None => {
                self.model = Err(if kv_bound {
                    Fallback::KvTimeout
                } else {
                    Fallback::KvError
                });
                self.profile = ProfileRead::Skipped;
            }
        }
        if self.switched {
            self.profile = ProfileRead::Skipped;
            return kv_bound && self.model.is_ok();
        }
        false
    }

    /// The profile of the identity the upstream named; `None`: out of time.
    pub fn on_profile(&mut self, read: Option<ProfileRead>) {
        self.profile = read.unwrap_or(ProfileRead::Failed(Fallback::KvTimeout));
    }

    /// Settles the outcome and hands over the rewriter's inputs.
    pub fn rewrite(&mut self, now: Millis) -> Inputs {
        self.kv_ms = self.kv_started.map(|k| now.saturating_sub(k));
        // A profile that is there but unreadable means default content: never guess.
        if let ProfileRead::Failed(f) = &self.profile
            && self.model.is_ok()
        {
            self.model = Err(*f);
        }
        self.outcome = match &self.model {
            Ok(_) => Outcome::Personalized,
            Err(f) => Outcome::Default(f.code()),
        };
        self.profile_state = self.profile.state();
        let profile = match std::mem::replace(&mut self.profile, ProfileRead::Skipped) {
            ProfileRead::Found(p, _) => Some(*p),
            _ => None,
        };
        let model = self.model.as_ref().ok().cloned();
        self.segments = match &model {
            Some(m) => {
                let ctx = attune_core::RequestContext {
                    profile: profile.as_ref(),
                    session: self.session.as_ref(),
                    country: self.country.as_deref(),
                    device: self.device,
                    now: self.started,
                };
                m.config
                    .segments_of(&ctx)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            }
            None => Vec::new(),
        };
        Inputs {
            now: self.started,
            visitor: self.who.id.clone(),
            profile,
            session: self.session.clone(),
            model,
            country: self.country.clone(),
            device: self.device,
            charset: self.charset,
        }
    }

    /// Whether the response carries the `x-attune-debug` explanation.
    pub fn debug(&self) -> bool {
        self.debug
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether impressions of this page are forwarded once it has streamed.
    pub fn forwards_impressions(&self) -> bool {
        self.outcome == Outcome::Personalized && !self.settings.ingest_url.is_empty()
    }

    /// The headers a personalized (or default-content) page sets, in order (`set-cookie` may
    /// repeat: append it; set the others). `page_item` joins the session cookie.
    pub fn response_headers(
        &mut self,
        page_item: Option<&str>,
        report: &Report,
        now: Millis,
    ) -> Vec<(&'static str, String)> {
        if let (Some(sess), Some(item)) = (self.session.as_mut(), page_item) {
            sess.record_item(item, self.started);
        }
        let mut out = Vec::new();
        for c in &self.set_cookies {
            out.push(("set-cookie", c.clone()));
        }
        if let Some(sess) = &self.session {
            let value = session::encode_cookie(sess, self.settings.session_key.as_bytes());
            out.push(("set-cookie", cookies::set_session(&value)));
        }
        out.push(("cache-control", PERSONALIZED_CACHE_CONTROL.into()));
        out.push(("x-attune", self.outcome.header()));
        let timing = Timing {
            total: now.saturating_sub(self.started) as f64,
            kv_wait: self.kv_ms.map(|v| v as f64),
            upstream: self.upstream_ms.map(|v| v as f64),
        };
        out.push(("server-timing", timing.header()));
        if self.debug {
            out.push(("x-attune-debug", header_json(&self.debug_json(report))));
        }
        out
    }

    /// The explanation of this page (`/__attune/debug`, `x-attune-debug`).
    pub fn debug_json(&self, report: &Report) -> String {
        Debug {
            outcome: self.outcome.header(),
            identity: Some(self.who.kind),
            profile: self.profile_state.clone(),
            session_items: self
                .session
                .as_ref()
                .map(|s| s.recent_items().collect())
                .unwrap_or_default(),
            segments: self.segments.iter().map(String::as_str).collect(),
            report,
        }
        .json()
    }
}

/// The explanation of a page Attune left alone.
pub fn bypass_debug_json(outcome: Outcome) -> String {
    Debug {
        outcome: outcome.header(),
        identity: None,
        profile: ProfileState::Skipped,
        session_items: Vec::new(),
        segments: Vec::new(),
        report: &Report::default(),
    }
    .json()
}

/// The headers a passed-through response gets (set, after dropping [`STRIP_ON_PASS_THROUGH`]).
pub fn pass_through_headers(
    outcome: Outcome,
    started: Millis,
    now: Millis,
) -> [(&'static str, String); 2] {
    let timing = Timing {
        total: now.saturating_sub(started) as f64,
        ..Timing::default()
    };
    [
        ("x-attune", outcome.header()),
        ("server-timing", timing.header()),
    ]
}

/// The visitor id from `attune_vid` (a new one, with its `Set-Cookie`, when it is absent or
/// malformed) and the identity the profile is keyed by.
pub fn identify(
    cookie: Option<&str>,
    s: &Settings,
    set_cookies: &mut Vec<String>,
    new_visitor_id: impl FnOnce() -> String,
) -> (String, Identity) {
    let vid = match cookies::get(cookie, cookies::VISITOR) {
        Some(v) if identity::valid_visitor_id(v) => v.to_owned(),
        _ => {
            let v = new_visitor_id();
            set_cookies.push(cookies::set_visitor(&v));
            v
        }
    };
    let demo_user = s
        .demo_login
        .then(|| cookies::get(cookie, cookies::DEMO_USER))
        .flatten();
    let who = identity::resolve(demo_user, &vid);
    (vid, who)
}

#[cfg(test)]
mod tests;
