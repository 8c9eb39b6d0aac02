//! HTTP/1.1 over std: the upstream that serves the pages and one-off requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) close: bool,
}

impl Response {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    if !body.is_empty() || method != "GET" {
        let _ = write!(req, "content-length: {}\r\n", body.len());
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on its own connection.
pub(super) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut all = headers.to_vec();
    all.push(("connection", "close"));
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(&request_bytes(port, method, path, &all, body))?;
    Ok(read_response(&mut conn)?)
}

pub(super) fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let close = get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
        close,
    })
}

/// The upstream site: the bench's pages, over keep-alive HTTP/1.1, one thread per connection.
pub(super) struct Upstream {
    pub(super) base: String,
}

impl Upstream {
    pub(super) fn start(site: &Path) -> Result<Upstream> {
        let mut pages = BTreeMap::new();
        for entry in fs::read_dir(site)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            pages.insert(format!("/{name}"), fs::read(entry.path())?);
        }
        let pages = Arc::new(pages);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let pages = Arc::clone(&pages);
                std::thread::spawn(move || {
                    let _ = serve(stream, &pages);
                });
            }
        });
        Ok(Upstream { base })
    }
}

fn serve(stream: TcpStream, pages: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let path = path.split('?').next().unwrap_or("/").to_owned();
        let mut close = false;
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                }
            }
        }
        let mut discard = vec![0; length];
        reader.read_exact(&mut discard)?;
        let mut out = Vec::new();
        match pages.get(&path) {
            Some(page) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
                    page.len()
                );
                out.extend_from_slice(page);
            }
            None => out.extend_from_slice(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found",
            ),
        }
        reader.get_mut().write_all(&out)?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_responses_are_read_whole_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-attune: personalized\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
                  HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            )
            .unwrap();
        });
        let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
        let first = read_response(&mut conn).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice(), first.close),
            (200, &b"hello world"[..], false)
        );
        assert_eq!(first.header("X-Attune"), Some("personalized"));
        let second = read_response(&mut conn).unwrap();
        assert_eq!(
            (second.status, second.body.as_slice(), second.close),
            (404, &b"abc"[..], true)
        );
        server.join().unwrap();
    }

    #[test]
    fn the_upstream_serves_pages_over_keep_alive() {
        let dir = std::env::temp_dir().join(format!("attune-bench-edge-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.html"), b"<p>a</p>").unwrap();
        let upstream = Upstream::start(&dir).unwrap();
        let port: u16 = upstream.base.rsplit(':').next().unwrap().parse().unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut conn = BufReader::new(stream);
        for (path, status, body) in [
            ("/a.html", 200, &b"<p>a</p>"[..]),
            ("/b.html", 404, b"not found"),
        ] {
            conn.get_mut()
                .write_all(&request_bytes(port, "GET", path, &[], b""))
                .unwrap();
            let r = read_response(&mut conn).unwrap();
            assert_eq!((r.status, r.body.as_slice()), (status, body));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
