//! A minimal HTTP/1.1 client for the tests of `serve --http`: one GET a
//! connection (`Connection: close`), the body read to its end (within a
//! minute), a chunked body decoded; and the events of a server-sent
//! event stream.

use std::io::{Read, Write};

/// A response: its status, its headers (lowercased) and its body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// GETs `path` of `base` (`http://IP:PORT`).
pub fn get(base: &str, path: &str) -> Reply {
    let addr = base.trim_start_matches("http://");
    get_as(base, path, addr)
}

/// [`get`], saying `Host: host`.
pub fn get_as(base: &str, path: &str, host: &str) -> Reply {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = head.to_ascii_lowercase();
    let body = match headers.contains("transfer-encoding: chunked") {
        true => unchunk(body),
        false => body.to_owned(),
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn unchunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The events of an SSE body: each its kind and its data (keep-alive
/// comments left out).
pub fn events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut kind = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = Some(k.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            Some((kind?, data?))
        })
        .collect()
}
