//! The HTTPS edge: AdmissionReview in, AdmissionReview out. The handler only parses, judges, records and responds.

pub mod response;
pub mod review;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::audit::{self, AuditLog};
use crate::decide::Decision;
use crate::engine::Engine;
use crate::metrics::Metrics;
use review::BadReview;

pub struct Webhook {
    pub engine: Engine,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub max_body: usize,
}

/// `POST /validate`, with the body size cap.
pub fn router(webhook: Arc<Webhook>) -> Router {
    let limit = webhook.max_body;
    Router::new().route("/validate", post(validate)).layer(DefaultBodyLimit::max(limit)).with_state(webhook)
}

#[tracing::instrument(skip_all, fields(uid, namespace, kind, operation, decision))]
async fn validate(State(webhook): State<Arc<Webhook>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(BadReview::TooLarge(webhook.max_body));
        }
        Err(rejection) => return refuse(BadReview::NotJson(rejection.body_text())),
    };
    let incoming = match review::parse(&body) {
        Ok(incoming) => incoming,
        Err(bad) => return refuse(bad),
    };
    let span = tracing::Span::current();
    span.record("uid", incoming.uid.as_str());
    let decision = match &incoming.request {
        Ok(request) => {
            span.record("namespace", request.namespace());
            span.record("kind", request.kind.kind.as_str());
            span.record("operation", tracing::field::debug(request.operation));
            webhook.engine.judge(request).await
        }
        Err(reason) => Decision::deny_request(reason.clone()),
    };
    let elapsed = started.elapsed();
    span.record("decision", tracing::field::debug(decision.verdict()));
    webhook.metrics.observe(&decision, elapsed.as_secs_f64());
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let record = audit::record(&incoming.uid, incoming.request.as_ref().ok(), &decision, elapsed, time);
    webhook.audit.write(&record).await;
    tracing::info!(latency_ms = record.latency_ms, "reviewed");
    axum::Json(response::build(&incoming.uid, &decision)).into_response()
}

fn refuse(bad: BadReview) -> Response {
    tracing::warn!(error = %bad, "refused a body that is not an answerable AdmissionReview");
    let status = StatusCode::from_u16(bad.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("{bad}\n")).into_response()
}
