//! The Secret key source against a loopback HTTP server answering real Kubernetes API JSON for get, list and
//! watch: keys load, rotate without restart, and a missing Secret, missing data key or bad key is a named error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use provgate::keys::{KeyRef, KeyStore, SecretRef, SecretWatch, fetch_secret_key};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const P256_A: &str = include_str!("fixtures/vectors/sigstore-rs/key-signed-busybox.pub.pem");
const P256_B: &str = include_str!("fixtures/vectors/tekton-chains/cosign.pub");
const PRIVATE: &str = include_str!("fixtures/vectors/tekton-chains/cosign.key");

#[derive(Default)]
struct Cluster {
    /// (namespace, name) -> Secret JSON
    secrets: BTreeMap<(String, String), Value>,
    resource_version: u64,
    watches: usize,
    requests: Vec<String>,
}

#[derive(Clone)]
struct Api {
    cluster: Arc<Mutex<Cluster>>,
    events: broadcast::Sender<(String, Value)>,
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
    fn put(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let mut c = self.cluster.lock().unwrap();
        c.resource_version += 1;
        let s = secret(ns, name, c.resource_version, data);
        let kind = if c.secrets.insert((ns.into(), name.into()), s.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let _ = self.events.send((kind.into(), s));
    }

    fn delete(&self, ns: &str, name: &str) {
        let mut c = self.cluster.lock().unwrap();
        c.resource_version += 1;
        if let Some(mut s) = c.secrets.remove(&(ns.into(), name.into())) {
            s["metadata"]["resourceVersion"] = c.resource_version.to_string().into();
            let _ = self.events.send(("DELETED".into(), s));
        }
    }

    async fn wait_for_watches(&self, n: usize) {
        for _ in 0..200 {
            if self.cluster.lock().unwrap().watches >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("watch requests never arrived: {:?}", self.cluster.lock().unwrap().requests);
    }
}

async fn serve() -> (Api, kube::Client) {
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

async fn until(
    store: &KeyStore,
    r: &KeyRef,
    pred: impl Fn(&Result<provgate::verify::PublicKey, provgate::keys::KeysError>) -> bool,
) {
    for _ in 0..200 {
        if pred(&store.get(r)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("key for {r} never reached the expected state; last: {:?}", store.get(r));
}

fn fp(pem: &str) -> String {
    provgate::verify::PublicKey::from_pem(pem.as_bytes()).unwrap().fingerprint().to_owned()
}

#[tokio::test]
async fn secret_keys_load_rotate_and_fail_with_named_errors() {
    let (api, client) = serve().await;
    // A Chains-style Secret: the public key next to the encrypted private key and its password.
    api.put(
        "tekton-chains",
        "signing-secrets",
        &[("cosign.pub", P256_A), ("cosign.key", PRIVATE), ("cosign.password", "hunter2")],
    );
    api.put("tekton-chains", "no-pub", &[("x509.pem", PRIVATE)]);
    api.put("tekton-chains", "garbage", &[("cosign.pub", "not a key")]);
    let watch = SecretWatch::new(client.clone());
    let store = KeyStore::new(Some(watch.clone()));
    let chains = KeyRef::parse("k8s://tekton-chains/signing-secrets").unwrap();
    let missing = KeyRef::parse("k8s://tekton-chains/absent").unwrap();
    let no_key = KeyRef::parse("k8s://tekton-chains/no-pub").unwrap();
    let garbage = KeyRef::parse("k8s://tekton-chains/garbage").unwrap();
    let refs = [chains.clone(), missing.clone(), no_key.clone(), garbage.clone()];
    store.watch(&refs);
    store.watch(&refs); // idempotent: one watch per reference

    until(&store, &chains, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
    until(&store, &missing, |k| k.as_ref().is_err_and(|e| e.code() == "key-secret-not-found")).await;
    until(&store, &no_key, |k| k.as_ref().is_err_and(|e| e.code() == "key-missing-data-key")).await;
    until(&store, &garbage, |k| k.as_ref().is_err_and(|e| e.code() == "key-unparseable")).await;
    assert!(store.get(&missing).unwrap_err().to_string().contains("tekton-chains/absent"));
    assert!(store.get(&no_key).unwrap_err().to_string().contains("cosign.pub"));
    assert!(store.get(&garbage).unwrap_err().to_string().contains("k8s://tekton-chains/garbage/cosign.pub"));
    assert_eq!(store.key_set(std::slice::from_ref(&chains)).unwrap().keys().len(), 1);
    assert_eq!(store.key_set(&[chains.clone(), missing.clone()]).unwrap_err().code(), "key-secret-not-found");

    // Every watch filters by name with a field selector.
    api.wait_for_watches(4).await;
    {
        let c = api.cluster.lock().unwrap();
        assert!(c.requests.iter().all(|r| r.contains("metadata.name=")), "{:?}", c.requests);
        assert_eq!(c.watches, 4, "{:?}", c.requests);
    }

    // Rotation: the new key applies without restarting anything.
    api.put("tekton-chains", "signing-secrets", &[("cosign.pub", P256_B), ("cosign.key", PRIVATE)]);
    until(&store, &chains, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_B))).await;
    // The missing Secret appears.
    api.put("tekton-chains", "absent", &[("cosign.pub", P256_A)]);
    until(&store, &missing, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
    // The key is removed from the Secret, then the Secret is deleted.
    api.put("tekton-chains", "signing-secrets", &[("cosign.key", PRIVATE)]);
    until(&store, &chains, |k| k.as_ref().is_err_and(|e| e.code() == "key-missing-data-key")).await;
    api.delete("tekton-chains", "signing-secrets");
    until(&store, &chains, |k| k.as_ref().is_err_and(|e| e.code() == "key-secret-not-found")).await;

    // One-shot GET for commands that do not watch.
    let absent = SecretRef { namespace: "tekton-chains".into(), name: "absent".into(), key: "cosign.pub".into() };
    assert_eq!(fetch_secret_key(client.clone(), &absent).await.unwrap().fingerprint(), fp(P256_A));
    let gone = SecretRef { name: "signing-secrets".into(), ..absent.clone() };
    assert_eq!(fetch_secret_key(client.clone(), &gone).await.unwrap_err().code(), "key-secret-not-found");
    let other_key = SecretRef { key: "other.pub".into(), ..absent.clone() };
    assert_eq!(fetch_secret_key(client, &other_key).await.unwrap_err().code(), "key-missing-data-key");

    // readiness wait on an already-known Secret answers at once
    let r = SecretRef { namespace: "tekton-chains".into(), name: "absent".into(), key: "cosign.pub".into() };
    assert!(watch.ready(&r, Duration::from_secs(5)).await.is_ok());
    watch.retain(&[]);
    assert_eq!(watch.get(&r).unwrap_err().code(), "key-not-loaded");
    // ... and that `get` restarted the watch, so the key comes back without anyone calling `watch`.
    let again = KeyRef::Secret(r.clone());
    until(&store, &again, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
}
