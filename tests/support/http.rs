//! A plain HTTP/1.0 GET from a thread inside a network namespace, for tests that reach
//! the test guest's httpd (`vmpod.http=1`); the host's busybox wget crashes.

use std::path::Path;
use std::time::Duration;

/// `GET http://addr:port/` from a thread inside `netns` with a plain TCP client (the
/// host's busybox wget crashes): the body, or what failed.
pub fn fetch(netns: &Path, addr: &str, port: u16) -> Result<String, String> {
    get(netns, addr, port, "/").map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `GET http://addr:port{path}` from a thread inside `netns`: the body's bytes.
pub fn get(netns: &Path, addr: &str, port: u16, path: &str) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let target: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
    vmpod::net::netns::run_in(Some(netns), move || {
        let t = Duration::from_secs(30);
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| format!("connect {target}: {e}"))?;
        s.set_read_timeout(Some(t)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)
            .map_err(|e| format!("read from {target}: {e}"))?;
        let end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("{target}: no HTTP header in {} bytes", response.len()))?;
        let head = String::from_utf8_lossy(&response[..end]);
        if head.starts_with("HTTP/1.") && head.contains(" 200 ") {
            Ok(response[end + 4..].to_vec())
        } else {
            Err(format!("{target}: not a 200 response: {head:?}"))
        }
    })
    .unwrap()
}
