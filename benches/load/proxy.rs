//! A loopback HTTP proxy in front of the registry: it counts every request provgate sends and can hold each answer
//! for a fixed delay, as a registry across a network would.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone)]
pub struct Proxy {
    /// `host:port` to name in image references.
    pub addr: String,
    count: Arc<AtomicU64>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    /// A proxy to the registry at `upstream` (`host:port`), adding `delay` before each answer.
    pub async fn start(upstream: &str, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicU64::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
        let upstream = upstream.to_owned();
        let (c, l) = (count.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let (client, upstream, c, l) = (client.clone(), upstream.clone(), c.clone(), l.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, upstream, c, l) = (client.clone(), upstream.clone(), c.clone(), l.clone());
                        async move { Ok::<_, Infallible>(forward(req, &client, &upstream, delay, &c, &l).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, count, log }
    }

    /// Requests seen so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// `METHOD path` of the requests seen since the log was last taken.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

async fn forward(
    req: Request<Incoming>,
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
    delay: Duration,
    count: &AtomicU64,
    log: &std::sync::Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    count.fetch_add(1, Ordering::SeqCst);
    let (mut parts, body) = req.into_parts();
    {
        let mut log = log.lock().unwrap();
        if log.len() < 100_000 {
            log.push(format!("{} {}", parts.method, parts.uri.path()));
        }
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    parts.uri = format!("http://{upstream}{path}").parse().unwrap();
    parts.headers.remove(hyper::header::HOST);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            parts.headers.remove(hyper::header::TRANSFER_ENCODING);
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!("proxy: {e}"))));
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            resp
        }
    }
}
