//! Ports on 127.0.0.1 and a minimal HTTP/1.1 GET for readiness probes. Hand-written on
//! purpose: the demo's runner (xtask) needs nothing more, and an HTTP client crate would be
//! compiled into it for two probes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that nobody listens on right now (the OS picks it).
pub fn free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The status line and headers of a response.
#[derive(Clone, Debug)]
pub struct HttpHead {
    pub status: u16,
    head: String,
}

impl HttpHead {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on 127.0.0.1:`port` with a browser-like user agent (the Worker passes bots'
/// requests through untouched) and the given extra headers; the body is read and dropped.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpHead> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Mozilla/5.0 (attune harness)\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok(HttpHead { status, head })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        assert!(port_is_free(port));
        let _held = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert!(!port_is_free(port));
    }

    #[test]
    fn http_get_reads_status_and_headers() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert_ne!(n, 0, "request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 418 I'm a teapot\r\nX-Attune: personalized\r\nContent-Length: 2\r\n\r\nhi")
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        let head = http_get(port, "/probe", &[("x-attune-debug", "t")]).unwrap();
        assert_eq!(head.status, 418);
        assert_eq!(head.header("x-attune"), Some("personalized"));
        assert_eq!(head.header("content-length"), Some("2"));
        assert_eq!(head.header("x-missing"), None);
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /probe HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nx-attune-debug: t\r\n"), "{request}");
    }
}
