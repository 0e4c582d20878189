//! The metrics endpoint's HTTP listener: `GET /metrics` (Prometheus text)
//! and `GET /health` (200 `ok`, or 503 naming each shard that cannot take
//! writes with a quorum, and why); anything else 404 (405 for a method
//! other than GET).
//!
//! Plain std threads and blocking sockets, away from the shards: a scrape
//! every few seconds needs no event loop, and this keeps the shards' rings
//! and loops untouched. `METRICS_CONNECTIONS_MAX` threads each accept on
//! the same listener and serve one connection at a time, so at most that
//! many are served at once and the rest wait in the backlog. Each request
//! head must arrive whole within `METRICS_IO_TIMEOUT_MS` and within
//! `METRICS_REQUEST_BYTES_MAX`; HTTP/1.0 and 1.1, one request per
//! connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{expose, Metrics};
use crate::constants::{METRICS_CONNECTIONS_MAX, METRICS_IO_TIMEOUT_MS, METRICS_REQUEST_BYTES_MAX};

/// Starts the endpoint's threads on `listener` (bound by the caller, so a
/// bind error stops the replica before it starts). They run for the life
/// of the process.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    for i in 0..METRICS_CONNECTIONS_MAX {
        let (listener, metrics) = (listener.try_clone()?, metrics.clone());
        std::thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || {
                let _span = tracing::info_span!("metrics", replica = metrics.replica).entered();
                accept_loop(&listener, &metrics)
            })?;
    }
    tracing::info!(%addr, "metrics endpoint: GET /metrics, GET /health");
    Ok(())
}

fn accept_loop(listener: &TcpListener, metrics: &Arc<Metrics>) {
    loop {
        match listener.accept() {
            Ok((stream, remote)) => {
                if let Err(e) = serve_one(stream, metrics) {
                    debug!(%remote, "metrics request: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                warn!("metrics endpoint: accept failed: {e}; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn serve_one(mut stream: TcpStream, metrics: &Arc<Metrics>) -> std::io::Result<()> {
    let timeout = Duration::from_millis(METRICS_IO_TIMEOUT_MS);
    stream.set_write_timeout(Some(timeout))?;
    let answer = match read_head(&mut stream, Instant::now() + timeout)? {
        Head::Whole(head) => route(&head, metrics),
        Head::TooLarge => Answer::text(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
    };
    stream.write_all(&answer.encode())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

enum Head {
    Whole(Vec<u8>),
    TooLarge,
}

/// Reads up to the blank line that ends a request head, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head_end(&head).is_some() {
            return Ok(Head::Whole(head));
        }
        if head.len() >= METRICS_REQUEST_BYTES_MAX {
            return Ok(Head::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("request head not complete within {METRICS_IO_TIMEOUT_MS} ms"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let room = (METRICS_REQUEST_BYTES_MAX - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room])? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request head",
                ))
            }
            n => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where the blank line ending a head starts (CRLF CRLF, or LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    crlf.or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// One response, written whole, then the connection closes.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: u16, reason: &'static str, body: &str) -> Answer {
        Answer {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let allow = if self.status == 405 {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// The answer to one request head.
fn route(head: &[u8], metrics: &Arc<Metrics>) -> Answer {
    let Some((method, path)) = request_line(head) else {
        return Answer::text(400, "Bad Request", "malformed request line\n");
    };
    let known = matches!(path, "/metrics" | "/health");
    match (method, path) {
        ("GET", "/metrics") => Answer {
            status: 200,
            reason: "OK",
            content_type: expose::CONTENT_TYPE,
            body: expose::text(metrics),
        },
        ("GET", "/health") => match expose::health(metrics) {
            Ok(()) => Answer::text(200, "OK", "ok\n"),
            Err(why) => Answer::text(503, "Service Unavailable", &format!("{why}\n")),
        },
        (_, _) if known => Answer::text(405, "Method Not Allowed", "only GET\n"),
        _ => Answer::text(404, "Not Found", "not found: try /metrics or /health\n"),
    }
}

/// The method and path (query string dropped) of an HTTP/1.x request line.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return None;
    }
    let path = target.split('?').next()?;
    path.starts_with('/').then_some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(head: &str) -> Answer {
        let m = Metrics::new(0, 1, 1);
        route(head.as_bytes(), &m)
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(get("GET /nope HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get("POST /metrics HTTP/1.1\r\n\r\n").status, 405);
        assert_eq!(get("GET /metrics HTTP/2\r\n\r\n").status, 400);
        assert_eq!(get("GET metrics HTTP/1.0\r\n\r\n").status, 400);
        assert_eq!(get("\u{1}\r\n\r\n").status, 400);
        let m = get("GET /metrics?x=1 HTTP/1.0\n\n");
        assert_eq!((m.status, m.content_type), (200, expose::CONTENT_TYPE));
        // Nothing published yet: the shard is starting, so not healthy.
        let h = get("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.status, 503);
        assert!(h.body.contains("shard 0: starting"), "{}", h.body);
    }

    #[test]
    fn an_answer_names_its_length_and_closes() {
        let a = Answer::text(200, "OK", "ok\n").encode();
        let a = String::from_utf8(a).unwrap();
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.contains("Content-Length: 3\r\n") && a.contains("Connection: close\r\n"));
        assert!(a.ends_with("\r\n\r\nok\n"));
    }

    #[test]
    fn a_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn a_slow_or_oversized_request_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new(0, 1, 1);
        serve(listener, m).unwrap();
        // Too large: answered 431.
        let mut s = TcpStream::connect(addr).unwrap();
        // Exactly the limit, with no end: the endpoint reads it all, so
        // closing leaves nothing unread (which would reset the answer).
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(METRICS_REQUEST_BYTES_MAX, b'a');
        s.write_all(&big).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        // Silent: closed once the deadline passes, with no answer.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty());
    }
}
