//! The HTTPS edge: AdmissionReview in, AdmissionReview out. The handler only parses, judges, records and responds;
//! every review ends in an answer and an audit record, even when provgate is overloaded or fails inside.

pub mod mutate;
pub mod response;
pub mod review;
pub mod server;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::audit::{self, AuditLog};
use crate::config::Config;
use crate::decide::Decision;
use crate::engine::Engine;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::reason::Reason;
use review::{BadReview, Request};

pub struct Webhook {
    pub engine: Engine,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    /// Where denials and warnings go as Kubernetes Events (nowhere without a cluster).
    pub events: Events,
    pub max_body: usize,
    /// How long the body may take to arrive once the request head has.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once, across all requests.
    body_budget: Semaphore,
    body_budget_bytes: usize,
    /// Reviews being judged at once; see [`Webhook::new`].
    reviews: Semaphore,
    max_reviews: usize,
    queue_timeout: Duration,
    /// Test-only: a review in this namespace panics while it is judged (see `config::TestHooks`).
    #[doc(hidden)]
    pub panic_in_namespace: Option<String>,
}

impl Webhook {
    /// A webhook with the request limits of `config`: bodies up to `maxRequestBytes`, arriving within
    /// `server.headerReadTimeout`, at most `server.maxRequestBytesInFlight` bytes of them held at once; at most
    /// `server.maxConcurrentReviews` reviews judged at once, a review waiting up to `server.reviewQueueTimeout`
    /// (never past the deadline) for a slot before it is denied `overloaded`.
    pub fn new(engine: Engine, audit: AuditLog, metrics: Arc<Metrics>, config: &Config) -> Self {
        Self {
            engine,
            audit,
            metrics,
            events: Events::disabled(),
            max_body: config.max_request_bytes,
            body_timeout: config.server.header_read_timeout,
            body_budget: Semaphore::new(config.server.max_request_bytes_in_flight.min(Semaphore::MAX_PERMITS)),
            body_budget_bytes: config.server.max_request_bytes_in_flight,
            reviews: Semaphore::new(config.server.max_concurrent_reviews),
            max_reviews: config.server.max_concurrent_reviews,
            queue_timeout: config.server.review_queue_timeout,
            panic_in_namespace: config.test_hooks.panic_in_namespace.clone(),
        }
    }

    /// Judges `request` in a review slot, within the deadline counted from `started` (the request's arrival): a review that finds no slot
    /// in time is denied `overloaded`, one that runs past the deadline `deadline-exceeded`, and one that panics
    /// `internal-error`. Dropping the returned future (the client went away) drops the work and frees the slot.
    async fn judge(&self, request: &Request, started: tokio::time::Instant) -> Decision {
        let deadline = self.engine.deadline;
        let waited = self.queue_timeout.min(deadline);
        let Ok(Ok(_slot)) = tokio::time::timeout(waited, self.reviews.acquire()).await else {
            tracing::warn!(limit = self.max_reviews, ?waited, "no review slot free; denying as overloaded");
            return Decision::deny_request(Reason::Overloaded { limit: self.max_reviews, waited });
        };
        // Boxed: the review's future is kilobytes (the gathering's state machines), and the timeout and the
        // handler's futures around it would otherwise copy it whole at every move.
        let judged = Box::pin(
            AssertUnwindSafe(async {
                self.inject_panic(request);
                self.engine.review(request, started).await
            })
            .catch_unwind(),
        );
        // The engine counts the deadline from the arrival too; this backstop bounds anything it does past it. The
        // grace lets the engine's own, more precise answer win.
        match tokio::time::timeout_at(started + deadline + DEADLINE_GRACE, judged).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(panic)) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(panic = what, "judging the review panicked; denying it (please report this)");
                Decision::deny_request(Reason::InternalError)
            }
            Err(_) => Decision::deny_request(Reason::DeadlineExceeded(deadline)),
        }
    }

    #[allow(clippy::panic)]
    fn inject_panic(&self, request: &Request) {
        if self.panic_in_namespace.as_deref() == Some(request.namespace()) {
            panic!("test hook: panic_in_namespace {:?}", request.namespace());
        }
    }
}

/// How far past the deadline the edge waits for the engine's own answer before denying on its behalf.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// The text of a panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// `POST /validate` and `POST /mutate` (the handlers enforce the body size cap and budget themselves).
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate::handle))
        .layer(DefaultBodyLimit::disable())
        .with_state(webhook)
}

/// Logs reviews whose client went away before the answer (their future is dropped, and the work with it).
struct Abandoned<'a> {
    uid: &'a str,
    answered: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::warn!(uid = self.uid, "the client went away before the answer; the review was dropped unfinished");
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(uid, namespace, kind, operation, decision))]
async fn validate(State(webhook): State<Arc<Webhook>>, request: axum::extract::Request) -> Response {
    let started = tokio::time::Instant::now();
    let clock = Instant::now();
    let (incoming, _budget) = match webhook.receive(request).await {
        Ok(received) => received,
        Err(refusal) => return refusal,
    };
    let mut abandoned = Abandoned { uid: &incoming.uid, answered: false };
    let decision = match &incoming.request {
        Ok(request) => webhook.judge(request, started).await,
        Err(reason) => Decision::deny_request(reason.clone()),
    };
    let elapsed = clock.elapsed();
    tracing::Span::current().record("decision", tracing::field::debug(decision.verdict()));
    webhook.metrics.observe(&decision, elapsed.as_secs_f64());
    webhook.events.notify(&incoming.uid, incoming.request.as_ref().ok(), &decision);
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let record = audit::record(&incoming.uid, incoming.request.as_ref().ok(), &decision, elapsed, time);
    webhook.audit.submit(&record);
    abandoned.answered = true;
    tracing::debug!(latency_ms = record.latency_ms, "reviewed");
    response::json(&response::build(&incoming.uid, &decision))
}

impl Webhook {
    /// The review of one request, read and parsed as both endpoints do, with its uid, namespace, kind and
    /// operation recorded on the current span; the body budget's share is held until the returned permit drops.
    /// Otherwise the refusal to send.
    async fn receive(
        &self,
        request: axum::extract::Request,
    ) -> Result<(review::Incoming, SemaphorePermit<'_>), Response> {
        let (body, budget) = self.read_body(request).await?;
        let incoming = review::parse(&body).map_err(refuse)?;
        let span = tracing::Span::current();
        span.record("uid", incoming.uid.as_str());
        if let Ok(request) = &incoming.request {
            span.record("namespace", request.namespace());
            span.record("kind", request.kind.kind.as_str());
            span.record("operation", tracing::field::debug(request.operation));
        }
        Ok((incoming, budget))
    }

    /// The whole body, up to `max_body` bytes, arriving within `body_timeout`, and the share of the body budget
    /// its bytes hold (released when dropped); otherwise the refusal to send.
    async fn read_body(&self, request: axum::extract::Request) -> Result<(Bytes, SemaphorePermit<'_>), Response> {
        let limit = self.max_body;
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(refuse(BadReview::TooLarge(limit)));
        }
        let mut body = request.into_body();
        let read = async {
            let mut held = self.body_budget.acquire_many(0).await.map_err(|_| self.busy())?;
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| refuse(BadReview::NotJson(e.to_string())))?;
                let Ok(data) = frame.into_data() else { continue };
                if buf.len() + data.len() > limit {
                    return Err(refuse(BadReview::TooLarge(limit)));
                }
                // Bytes are counted as they arrive: a client holds only what it has really sent.
                let n = u32::try_from(data.len()).map_err(|_| refuse(BadReview::TooLarge(limit)))?;
                let more = tokio::time::timeout(self.queue_timeout, self.body_budget.acquire_many(n)).await;
                let Ok(Ok(more)) = more else { return Err(self.busy()) };
                held.merge(more);
                buf.extend_from_slice(&data);
            }
            Ok((Bytes::from(buf), held))
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(result) => result,
            Err(_) => {
                let timeout = self.body_timeout;
                tracing::warn!(?timeout, "the request body did not arrive in time");
                Err((StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {timeout:?}\n"))
                    .into_response())
            }
        }
    }

    /// The answer when the body budget stays full: no review can be read, so no AdmissionReview can answer.
    fn busy(&self) -> Response {
        let message = format!(
            "provgate holds its limit of {} bytes of request bodies (server.maxRequestBytesInFlight) and none were \
             released within {:?}; retry",
            self.body_budget_bytes, self.queue_timeout
        );
        tracing::warn!("{message}");
        (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response()
    }
}

fn refuse(bad: BadReview) -> Response {
    tracing::warn!(error = %bad, "refused a body that is not an answerable AdmissionReview");
    let status = StatusCode::from_u16(bad.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("{bad}\n")).into_response()
}
