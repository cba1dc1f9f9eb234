//! The plain-HTTP admin port: liveness, readiness (a policy set is loaded) and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::policy::PolicyStore;

#[derive(Clone)]
pub struct Admin {
    pub policies: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, String) {
    match (admin.policies.current(), admin.policies.last_error()) {
        (Some(set), None) => {
            (StatusCode::OK, format!("ready: {} policies, generation {}\n", set.policies().len(), set.generation()))
        }
        (Some(set), Some(errors)) => (
            StatusCode::OK,
            format!(
                "ready: {} policies (generation {}); a later edit was rejected:\n{errors}\n",
                set.policies().len(),
                set.generation()
            ),
        ),
        (None, Some(errors)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: policies do not load:\n{errors}\n"))
        }
        (None, None) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: policies not loaded yet\n".into()),
    }
}

async fn metrics(State(admin): State<Admin>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        admin.metrics.render(),
    )
}
