//! The listeners: TLS from a reloadable rustls config (or plain TCP for the admin port), HTTP/1.1 and HTTP/2, at
//! most `max_connections` open connections, and every connection closed once it has carried no request for
//! `header_read_timeout`, so silent or slow clients cannot hold the port.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::tls::ServerTls;

/// Connection limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; further ones are not accepted until one closes.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (TLS handshake and request head included).
    pub header_read_timeout: Duration,
}

/// HTTP/1.1 read buffer per connection (request heads are a few KiB).
const H1_MAX_BUF: usize = 64 * 1024;
/// HTTP/2 flow-control windows: bytes a client may send ahead of the handler, per stream and per connection.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// Requests at once on one HTTP/2 connection (the API server opens another connection beyond this).
const H2_MAX_STREAMS: u32 = 100;

/// How long a connection told to stop (idle, or at shutdown) may take to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` turns true; then stops accepting,
/// asks every connection to finish its in-flight requests, and returns once all are closed (the caller bounds
/// that wait).
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Small transport buffers: what a connection can make provgate hold before the handler reads it is bounded
    // by these times `max_connections` (request bodies beyond them wait for the handler's byte budget).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let builder = Arc::new(builder);
    loop {
        // A slot first, then the connection: at the limit, new clients wait in the accept queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = stopping(&mut shutdown) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping(&mut shutdown) => break,
        };
        // Answers are small and written in more than one piece (TLS records, head and body): without this, Nagle
        // holds the last piece until the client's delayed ACK, about 40 ms on Linux.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "TCP_NODELAY not set");
        }
        let connection = Connection {
            tls: tls.clone(),
            app: app.clone(),
            builder: builder.clone(),
            idle_limit: limits.header_read_timeout,
            shutdown: shutdown.clone(),
            _slot: slot,
        };
        tokio::spawn(async move {
            connection.run(tcp).await;
            tracing::trace!(%peer, "connection closed");
        });
    }
    drop(listener);
    // Every connection holds one slot until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// One accepted connection and what it needs.
struct Connection {
    tls: Option<ServerTls>,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_limit: Duration,
    shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let (in_flight, watched) = watch::channel(0usize);
        let idle = idle_for(watched, self.idle_limit);
        tokio::pin!(idle);
        let Some(tls) = self.tls.clone() else {
            return self.serve(tcp, in_flight, idle).await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let stream = tokio::select! {
            stream = acceptor.accept(tcp) => match stream {
                Ok(stream) => stream,
                Err(e) => return handshake_failed(&e),
            },
            () = &mut idle => {
                tracing::debug!("closing a connection that did not finish its TLS handshake in time");
                return;
            }
            () = stopping(&mut self.shutdown) => return,
        };
        self.serve(stream, in_flight, idle).await;
    }

    /// Serves HTTP on `io` until the client closes it, it stays `idle` too long, or the server stops.
    async fn serve<I>(
        mut self,
        io: I,
        in_flight: watch::Sender<usize>,
        mut idle: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let in_flight = Arc::new(in_flight);
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |request| {
            let busy = Busy::start(in_flight.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(busy);
                response
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            () = &mut idle => {
                tracing::debug!("closing a connection that carried no request in time");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            }
            () = stopping(&mut self.shutdown) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Logs a failed handshake: a refused client certificate where operators see it, other failures (scanners,
/// clients that hang up) quietly.
fn handshake_failed(e: &std::io::Error) {
    let refused = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|tls| {
        matches!(tls, rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    });
    if refused {
        tracing::warn!(error = %e, "refused a client without a valid client certificate (tls.clientCaFile)");
    } else {
        tracing::debug!(error = %e, "TLS handshake failed");
    }
}

/// Resolves once the server is told to stop (or whoever could tell it is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Counts one request in flight on its connection for as long as it lives (its handler future is dropped when
/// the client goes away, and this with it).
struct Busy(Arc<watch::Sender<usize>>);

impl Busy {
    fn start(in_flight: Arc<watch::Sender<usize>>) -> Self {
        in_flight.send_modify(|n| *n += 1);
        Self(in_flight)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no request has been in flight for `limit` (counting from now, or from the last request's end).
async fn idle_for(mut in_flight: watch::Receiver<usize>, limit: Duration) {
    loop {
        if *in_flight.borrow_and_update() == 0 {
            match tokio::time::timeout(limit, in_flight.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return,
            }
        } else if in_flight.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let idle = tokio::spawn(idle_for(rx, Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(8)).await;
        let busy = Busy::start(tx.clone());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a request in flight keeps the connection");
        drop(busy);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!idle.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished(), "idle for 10 s after the request ended");
    }
}
