//! A site of our own on 127.0.0.1 to stand behind the Worker as its upstream.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

/// An upstream of our own on 127.0.0.1: pages that say who is signed in (the `sessionid`
/// cookie or the `Authorization` header), with the cache headers a path asks for, and a count
/// of the requests it served. Every request's `Cookie` and `x-attune-debug` header is kept.
pub(crate) struct Site {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SiteRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Debug)]
pub(crate) struct SiteRequest {
    pub(crate) path: String,
    pub(crate) cookie: Option<String>,
    pub(crate) debug_token: bool,
}

impl Site {
    pub(crate) fn start() -> Site {
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<SiteRequest>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let cookie = header("cookie");
                let served = {
                    let mut seen = seen2.lock().expect("lock");
                    seen.push(SiteRequest {
                        path: path.clone(),
                        cookie: cookie.clone(),
                        debug_token: header("x-attune-debug").is_some(),
                    });
                    seen.iter().filter(|r| r.path == path).count()
                };
                let who = cookie
                    .as_deref()
                    .and_then(|c| {
                        c.split(';')
                            .filter_map(|p| p.trim().strip_prefix("sessionid="))
                            .next()
                            .map(str::to_owned)
                    })
                    .or_else(|| header("authorization"))
                    .unwrap_or_else(|| "nobody".into());
                let (extra, content_type, body) = site_page(&path, &who, served);
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                )
                .into_bytes();
                for h in extra {
                    out.extend_from_slice(h.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
                let _ = conn.write_all(&out);
            }
        });
        Site {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn served(&self, path: &str) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.iter().filter(|r| r.path == path).count()
    }

    pub(crate) fn requests(&self) -> Vec<SiteRequest> {
        self.seen.lock().expect("lock").clone()
    }

    /// Stops listening: the next request finds nobody there.
    pub(crate) fn shut_down(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// `(extra headers, content type, body)` of a site page: the path's first segment names its
/// cache headers.
pub(crate) fn site_page(
    path: &str,
    who: &str,
    served: usize,
) -> (Vec<&'static str>, &'static str, Vec<u8>) {
    let html = "text/html; charset=utf-8";
    let page =
        format!("<html><body><p>Signed in as {who}</p><p>request {served}</p></body></html>");
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "none" | "basic" => (vec![], html, page.into_bytes()),
        "no-cache" => (vec!["cache-control: no-cache"], html, page.into_bytes()),
        "vary-cookie" => (
            vec!["cache-control: max-age=60", "vary: Cookie"],
            html,
            page.into_bytes(),
        ),
        "private" => (vec!["cache-control: private, max-age=60"], html, page.into_bytes()),
        "public" => (vec!["cache-control: public, max-age=60"], html, page.into_bytes()),
        // A Latin-1 page that declares its charset only in a <meta>: its own "£" is 0xA3.
        "latin1" => (
            vec![],
            "text/html",
            b"<html><head><meta charset=\"iso-8859-1\"></head><body><p>Ours: \xA31.00</p>\
<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\">\
<li data-attune-item><b data-attune-field=\"price\">\xA39.99</b></li></ul></body></html>"
                .to_vec(),
        ),
        // A slot whose name is not Latin-1, for the debug header.
        "slots" => (
            vec![],
            html,
            "<html><body><ul data-attune-slot=\"r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd}\" data-attune-strategy=\"trending\" data-attune-count=\"1\"><li data-attune-item><b data-attune-field=\"title\">x</b></li></ul></body></html>"
                .as_bytes()
                .to_vec(),
        ),
        _ => (vec![], "text/plain", b"not found".to_vec()),
    }
}
