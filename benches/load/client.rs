//! The load generator: HTTP/1.1 keep-alive connections over rustls to provgate's `/validate`, in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// What a review's answer must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allow,
    /// Denied with this reason code in the answer.
    Deny(&'static str),
}

impl Expect {
    /// Whether `body` (an AdmissionReview answer) is what was expected.
    pub fn matches(self, body: &[u8]) -> bool {
        match self {
            Self::Allow => contains(body, br#""allowed":true"#),
            Self::Deny(code) => contains(body, br#""allowed":false"#) && contains(body, code.as_bytes()),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Where provgate listens and the CA its certificate chains to.
#[derive(Clone)]
pub struct Target {
    pub addr: String,
    tls: tokio_rustls::TlsConnector,
}

impl Target {
    pub fn new(addr: &str, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        Self { addr: addr.to_owned(), tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// A new keep-alive connection, and the DER of the certificate the server presented.
    pub async fn connect(&self) -> Result<(Conn, Vec<u8>), String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        Ok((Conn { sender, host: self.addr.clone() }, peer))
    }
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Posts one review; the HTTP status and the body.
    pub async fn post(&mut self, body: Bytes) -> Result<(u16, Bytes), String> {
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let request = hyper::Request::post("/validate")
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .unwrap();
        let resp = self.sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, body))
    }

    /// Posts a review whose answer must be `expect`; `Err` with the answer otherwise.
    pub async fn review(&mut self, body: Bytes, expect: Expect) -> Result<(), String> {
        let (status, answer) = self.post(body).await?;
        if status != 200 || !expect.matches(&answer) {
            return Err(format!("HTTP {status}, wanted {expect:?}: {}", String::from_utf8_lossy(&answer)));
        }
        Ok(())
    }
}

/// The outcome of a load run.
#[derive(Debug, Default)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of each answered review, µs.
    pub latencies: Vec<u32>,
    pub elapsed: Duration,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency (0..=1), in ms.
    pub fn quantile(&mut self, q: f64) -> f64 {
        quantile_ms(&mut self.latencies, q)
    }

    fn merge(&mut self, other: Run) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

/// The `q` quantile (0..=1) of latencies in µs, in ms.
pub fn quantile_ms(latencies: &mut [u32], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.sort_unstable();
    let at = ((latencies.len() - 1) as f64 * q).round() as usize;
    f64::from(latencies[at]) / 1000.0
}

/// `conns` connections, each posting `body` back to back, for `duration` (or until `limit` reviews in all).
pub async fn closed_loop(
    target: &Target,
    conns: usize,
    duration: Duration,
    limit: u64,
    body: Bytes,
    expect: Expect,
) -> Run {
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(target.connect().await.unwrap().0);
    }
    let per_conn = limit.div_ceil(conns as u64);
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut run = Run { latencies: Vec::with_capacity(65_536), ..Run::default() };
                let mut n = 0;
                while Instant::now() < until && n < per_conn {
                    let t = Instant::now();
                    match conn.review(body.clone(), expect).await {
                        Ok(()) => {
                            run.ok += 1;
                            run.latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                        Err(e) => {
                            run.errors += 1;
                            run.first_error.get_or_insert(e);
                            break;
                        }
                    }
                    n += 1;
                }
                run
            })
        })
        .collect();
    let mut all = Run::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all.elapsed = started.elapsed();
    all
}
