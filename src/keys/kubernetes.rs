//! Keys kept in Kubernetes Secrets: one watch per (namespace, Secret, data key), filtered by a field selector on
//! the name, so rotation applies without restart. Only the wanted data key is kept; every other value of the
//! Secret (a Chains private key, its password) is zeroed and dropped as soon as the event arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use zeroize::Zeroize as _;

use super::{KeyState, KeysError, SecretRef};
use crate::verify::PublicKey;

type Loaded = Option<Result<PublicKey, KeysError>>;

struct Watched {
    state: watch::Receiver<Loaded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the Secrets that policies name and holds each wanted key, parsed, as of the last event.
#[derive(Clone)]
pub struct SecretWatch {
    client: kube::Client,
    /// Looked up for every review of an image whose policy names a Secret key, so hashed fast.
    watched: Arc<Mutex<HashMap<SecretRef, Watched, foldhash::fast::RandomState>>>,
}

impl SecretWatch {
    pub fn new(client: kube::Client) -> Self {
        Self { client, watched: Arc::default() }
    }

    /// Starts a watch for `r` unless one runs. Outside a tokio runtime nothing starts (and `get` says not loaded).
    pub fn watch(&self, r: &SecretRef) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if watched.contains_key(r) {
            return;
        }
        let (tx, state) = watch::channel(None);
        let task = runtime.spawn(run(self.client.clone(), r.clone(), tx));
        watched.insert(r.clone(), Watched { state, task });
    }

    /// Stops watches for Secrets no longer named (after a policy reload).
    pub fn retain(&self, keep: &[SecretRef]) {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).retain(|r, _| keep.contains(r));
    }

    /// The key as of the latest event. A Secret nobody asked to watch yet starts its watch now and is
    /// "not loaded" until the first answer arrives.
    pub fn get(&self, r: &SecretRef) -> Result<PublicKey, KeysError> {
        let state =
            self.watched.lock().unwrap_or_else(PoisonError::into_inner).get(r).map(|w| w.state.borrow().clone());
        match state {
            Some(Some(loaded)) => loaded,
            Some(None) => Err(KeysError::NotLoaded(r.to_string())),
            None => {
                self.watch(r);
                Err(KeysError::NotLoaded(r.to_string()))
            }
        }
    }

    /// The state of every watched Secret key, sorted by reference.
    pub fn states(&self) -> Vec<(SecretRef, KeyState)> {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let mut states: Vec<(SecretRef, KeyState)> =
            watched.iter().map(|(r, w)| (r.clone(), KeyState::of(w.state.borrow().as_ref()))).collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// Waits (at most `timeout`) for the first answer about `r`: for readiness checks and one-shot commands.
    pub async fn ready(&self, r: &SecretRef, timeout: Duration) -> Result<PublicKey, KeysError> {
        self.watch(r);
        let rx = self.watched.lock().unwrap_or_else(PoisonError::into_inner).get(r).map(|w| w.state.clone());
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        }
        self.get(r)
    }
}

async fn run(client: kube::Client, r: SecretRef, tx: watch::Sender<Loaded>) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &r.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listed = false;
                None
            }
            Ok(Event::InitApply(secret) | Event::Apply(secret)) => {
                listed = true;
                Some(extract(secret, &r))
            }
            Ok(Event::InitDone) if !listed => Some(Err(KeysError::SecretNotFound(r.clone()))),
            Ok(Event::InitDone) => None,
            Ok(Event::Delete(secret)) => {
                drop(extract(secret, &r));
                Some(Err(KeysError::SecretNotFound(r.clone())))
            }
            // Keep the last good key through transient errors (the watcher retries with backoff); report the
            // error only while nothing was ever loaded.
            Err(e) => match &*tx.borrow() {
                Some(Ok(_)) => None,
                _ => Some(Err(KeysError::Api { reference: r.to_string(), error: e.to_string() })),
            },
        };
        if let Some(update) = update {
            tx.send_replace(Some(update));
        }
    }
}

/// Takes the wanted data key out of `secret`, zeroes every other value, and parses the key.
fn extract(mut secret: Secret, r: &SecretRef) -> Result<PublicKey, KeysError> {
    let mut data = secret.data.take().unwrap_or_default();
    let wanted = data.remove(&r.key);
    for value in data.values_mut() {
        value.0.zeroize();
    }
    drop(data);
    if let Some(string_data) = secret.string_data.as_mut() {
        string_data.values_mut().for_each(|v| v.zeroize());
    }
    if secret.metadata.name.as_deref() != Some(r.name.as_str()) {
        return Err(KeysError::SecretNotFound(r.clone()));
    }
    let pem = wanted.ok_or_else(|| KeysError::MissingDataKey(r.clone()))?;
    PublicKey::from_pem(&pem.0).map_err(|error| KeysError::Unparseable { source_ref: r.to_string(), error })
}

/// One-shot read (GET) of a Secret's key, for `provgate verify --key k8s://…` where no watch runs.
pub async fn fetch_secret_key(client: kube::Client, r: &SecretRef) -> Result<PublicKey, KeysError> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &r.namespace);
    match api.get_opt(&r.name).await {
        Ok(Some(secret)) => extract(secret, r),
        Ok(None) => Err(KeysError::SecretNotFound(r.clone())),
        Err(e) => Err(KeysError::Api { reference: r.to_string(), error: e.to_string() }),
    }
}
