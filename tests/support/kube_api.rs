//! A loopback HTTP server answering real Kubernetes API JSON for Secrets: get, list and streaming watch (with the
//! field selector on the name), and a kube client pointed at it. A thin seam: it stands in for the API server only
//! where the real one (tests/kube_e2e.rs) is too slow to start per test.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Default)]
pub struct Cluster {
    /// (namespace, name) -> Secret JSON
    pub secrets: BTreeMap<(String, String), Value>,
    pub resource_version: u64,
    pub watches: usize,
    pub requests: Vec<String>,
}

#[derive(Clone)]
pub struct Api {
    pub cluster: Arc<Mutex<Cluster>>,
    pub events: broadcast::Sender<(String, Value)>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret(ns: &str, name: &str, rv: u64, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), b64(v).into())).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
           "data": data})
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn name_from_selector(q: &HashMap<String, String>) -> Option<String> {
    q.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")).map(str::to_owned)
}

async fn get(State(api): State<Api>, Path((ns, name)): Path<(String, String)>) -> Response {
    let c = api.cluster.lock().unwrap();
    match c.secrets.get(&(ns, name.clone())) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
    }
}

async fn list_or_watch(
    State(api): State<Api>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let wanted = name_from_selector(&q);
    let mut c = api.cluster.lock().unwrap();
    c.requests.push(format!("{ns} {q:?}"));
    if q.get("watch").map(String::as_str) == Some("true") {
        c.watches += 1;
        let rx = api.events.subscribe();
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let (ns, wanted) = (ns.clone(), wanted.clone());
            async move {
                loop {
                    let (kind, obj) = rx.recv().await.ok()?;
                    let same_ns = obj["metadata"]["namespace"] == ns.as_str();
                    let same_name = wanted.as_deref().is_none_or(|w| obj["metadata"]["name"] == w);
                    if same_ns && same_name {
                        let line = format!("{}\n", json!({"type": kind, "object": obj}));
                        return Some((Ok::<_, std::convert::Infallible>(line), rx));
                    }
                }
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
    }
    let items: Vec<Value> = c
        .secrets
        .iter()
        .filter(|((n, name), _)| *n == ns && wanted.as_deref().is_none_or(|w| w == name))
        .map(|(_, s)| s.clone())
        .collect();
    axum::Json(json!({"apiVersion": "v1", "kind": "SecretList",
                      "metadata": {"resourceVersion": c.resource_version.to_string()}, "items": items}))
    .into_response()
}

impl Api {
    pub fn put(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let mut c = self.cluster.lock().unwrap();
        c.resource_version += 1;
        let s = secret(ns, name, c.resource_version, data);
        let kind = if c.secrets.insert((ns.into(), name.into()), s.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let _ = self.events.send((kind.into(), s));
    }

    pub fn delete(&self, ns: &str, name: &str) {
        let mut c = self.cluster.lock().unwrap();
        c.resource_version += 1;
        if let Some(mut s) = c.secrets.remove(&(ns.into(), name.into())) {
            s["metadata"]["resourceVersion"] = c.resource_version.to_string().into();
            let _ = self.events.send(("DELETED".into(), s));
        }
    }

    pub async fn wait_for_watches(&self, n: usize) {
        for _ in 0..200 {
            if self.cluster.lock().unwrap().watches >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("watch requests never arrived: {:?}", self.cluster.lock().unwrap().requests);
    }
}

/// Starts the server on a loopback port; returns its handle and a client for it.
pub async fn serve() -> (Api, kube::Client) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let api = Api { cluster: Arc::default(), events: broadcast::channel(64).0 };
    let app = axum::Router::new()
        .route("/api/v1/namespaces/{ns}/secrets", axum::routing::get(list_or_watch))
        .route("/api/v1/namespaces/{ns}/secrets/{name}", axum::routing::get(get))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(url.parse().unwrap());
    (api, kube::Client::try_from(config).unwrap())
}
