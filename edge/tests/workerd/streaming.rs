//! A slow upstream page streams through the Worker and arrives whole.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::{BROWSER, start_with};

/// A page the upstream sends in two parts, 1.5 s apart, and larger than a read of the rest of
/// the body: the first part reaches the visitor before the upstream sends the second, and the
/// whole page arrives byte for byte (default content: nothing to change in it).
#[test]
pub(crate) fn a_slow_page_streams_and_arrives_whole() {
    use std::io::{BufRead, BufReader, Read};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
    let port = listener.local_addr().expect("addr").port();
    let head =
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>slow</title></head><body>\n";
    let mut tail = String::new();
    for i in 0..2000 {
        tail.push_str(&format!(
            "<p id=\"p{i}\">paragraph {i} of a long page</p>\n"
        ));
        if i == 1000 {
            tail.push_str("<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\"><li data-attune-item><b data-attune-field=\"title\">kept</b></li></ul>\n");
        }
    }
    tail.push_str("</body></html>\n");
    let page = format!("{head}{tail}");
    assert!(tail.len() > 64 * 1024, "the rest spans several reads");
    let (head_bytes, tail_bytes) = (head.as_bytes().to_vec(), tail.as_bytes().to_vec());
    let site = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            head_bytes.len() + tail_bytes.len()
        )
        .into_bytes();
        out.extend_from_slice(&head_bytes);
        let _ = conn.write_all(&out);
        std::thread::sleep(Duration::from_millis(1500));
        let _ = conn.write_all(&tail_bytes);
    });
    let Some(w) = start_with(&format!("http://127.0.0.1:{port}"), &[]) else {
        return;
    };
    let worker_port: u16 = w.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", worker_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "GET /slow.html HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {BROWSER}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first_body_at = None;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_body_at.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&raw[end + 4..]).contains("<title>slow</title>")
        {
            first_body_at = Some(started.elapsed());
        }
    }
    site.join().unwrap();
    let first = first_body_at.expect("the page's head arrived");
    assert!(
        first < Duration::from_millis(1200),
        "the first part took {first:?}: it waited for the rest of the upstream's body"
    );
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head_text = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head_text.contains("x-attune: default"), "{head_text}");
    let body = if head_text.contains("transfer-encoding: chunked") {
        dechunk(&raw[end + 4..])
    } else {
        raw[end + 4..].to_vec()
    };
    assert_eq!(String::from_utf8_lossy(&body), page);
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
