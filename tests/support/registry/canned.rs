//! A loopback HTTP/1.1 server with canned answers, for faults and pagination no real registry can be made to show.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provgate::registry::HostConfig;

/// Reads an HTTP request head (bounded to 64 KiB); `None` when the peer sent nothing usable.
pub(super) fn read_head(conn: &mut impl std::io::Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

pub(super) fn http_answer(status: u16, content_type: &str, body: &[u8], headers: &[(String, String)]) -> String {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&String::from_utf8_lossy(body));
    out
}

/// The status line and headers of a `Connection: close` answer; `Content-Length` when `length` is given.
pub(super) fn response_head(status: u16, headers: &[(String, String)], length: Option<usize>) -> String {
    let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    if let Some(n) = length {
        out.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out
}

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Accept and read the request, then never answer.
    pub stall: bool,
    /// Omit Content-Length and stream the body until the connection closes.
    pub no_length: bool,
}

impl Canned {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            stall: false,
            no_length: false,
        }
    }
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: br#"{"errors":[]}"#.to_vec(), stall: false, no_length: false }
    }
    pub fn stall() -> Self {
        Self { stall: true, ..Self::status(200) }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A loopback HTTP/1.1 server answering request targets (path and query) from a table, counting hits; unknown
/// targets get 404. It stands in for misbehaving registries that no real registry can be made to imitate.
pub struct CannedServer {
    pub addr: String,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CannedServer {
    pub fn start(routes: HashMap<String, Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let live = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(head) = read_head(&mut conn) else { continue };
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or_default().to_owned();
                let target = words.next().unwrap_or_default().to_owned();
                *counter.lock().unwrap().entry(target.clone()).or_insert(0) += 1;
                let answer = routes.get(&target).cloned().unwrap_or_else(|| Canned::status(404));
                if answer.stall {
                    live.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                    continue;
                }
                let out =
                    response_head(answer.status, &answer.headers, (!answer.no_length).then_some(answer.body.len()));
                let _ = conn.write_all(out.as_bytes());
                if method != "HEAD" {
                    let _ = conn.write_all(&answer.body);
                }
            }
        });
        Self { addr, hits, stop: Some(stop), thread: Some(thread) }
    }

    pub fn hits(&self, target: &str) -> usize {
        self.hits.lock().unwrap().get(target).copied().unwrap_or(0)
    }

    pub fn host_config(&self) -> HostConfig {
        HostConfig { insecure: true, ..HostConfig::default() }
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
