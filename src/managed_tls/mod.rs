//! Self-managed serving TLS: keeps a CA and serving pair in a Secret of provgate's own namespace (created when
//! absent, renewed before expiry, CA rollovers published before use), writes the CA bundle into the webhook
//! configurations named in the config and no others, and follows the Secret so serving pods swap pairs live.
//! Safe with many replicas: a create that conflicts means another replica made it, and every update carries the
//! resourceVersion it was decided from, so a replica that loses re-reads.

pub mod material;
pub mod plan;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

use crate::config::ManagedTlsConfig;
use crate::tls::Pair;
use material::{Facts, Material, MaterialError};
use plan::{Lifetimes, Names, Step};

/// A managed-TLS failure; the previous pair keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ManagedTlsError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {secret} holds no servable CA and serving pair after {waited:?}: {last}")]
    NotReady { secret: String, waited: Duration, last: String },
}

/// The managed Secret, the names it serves and the webhook configurations it publishes to.
#[derive(Clone)]
pub struct ManagedTls {
    config: ManagedTlsConfig,
    names: Names,
    lifetimes: Lifetimes,
    secrets: kube::Api<Secret>,
    validating: kube::Api<ValidatingWebhookConfiguration>,
    mutating: kube::Api<MutatingWebhookConfiguration>,
}

impl ManagedTls {
    pub fn new(client: kube::Client, config: ManagedTlsConfig) -> Self {
        let mut dns = crate::certs::service_names(&config.service, &config.namespace);
        let mut ips = Vec::new();
        for name in &config.extra_names {
            match name.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(name.clone()),
            }
        }
        let lifetimes = Lifetimes {
            validity: config.validity,
            renew_before: config.renew_before,
            ca_validity: config.ca_validity,
            ca_renew_before: config.ca_renew_before,
            ca_handover: config.ca_handover,
        };
        Self {
            secrets: kube::Api::namespaced(client.clone(), &config.namespace),
            validating: kube::Api::all(client.clone()),
            mutating: kube::Api::all(client),
            names: Names { dns, ips },
            lifetimes,
            config,
        }
    }

    /// `namespace/name` of the Secret.
    pub fn source(&self) -> String {
        format!("Secret {}/{}", self.config.namespace, self.config.secret)
    }

    /// Reconciles until the Secret holds a servable pair (at most `timeout`, retrying every second) and returns
    /// the pair.
    pub async fn ensure(&self, timeout: Duration) -> Result<Pair, ManagedTlsError> {
        let start = tokio::time::Instant::now();
        loop {
            let last = match self.reconcile().await {
                Ok(Some(material)) => return Ok(pair_of(&material)),
                Ok(None) => "another replica changed it; reading again".to_owned(),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                return Err(ManagedTlsError::NotReady { secret: self.source(), waited: timeout, last });
            }
            tracing::info!(secret = %self.source(), %last, "managed TLS not ready yet");
            tokio::time::sleep(Duration::from_secs(1).min(self.config.check_interval)).await;
        }
    }

    /// Every `checkInterval`, renews what needs renewing and publishes the bundle. Runs until dropped.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.config.check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            if let Err(error) = self.reconcile().await {
                tracing::error!(secret = %self.source(), %error, "managed TLS check failed; the current pair keeps serving");
            }
        }
    }

    /// One pass: reads the Secret, publishes its bundle when it is valid, takes the one step the renewal decision
    /// names, and publishes what it wrote. Returns the servable material as of the end of the pass, `None` when
    /// another replica won a write (the next pass re-reads).
    async fn reconcile(&self) -> Result<Option<Material>, ManagedTlsError> {
        let now = time::OffsetDateTime::now_utc();
        let secret = self.secrets.get_opt(&self.config.secret).await.map_err(|e| self.api("read", e))?;
        let (current, state) = match &secret {
            None => (None, None),
            Some(secret) => {
                let data: std::collections::BTreeMap<String, Vec<u8>> =
                    secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                let parsed = Material::from_data(&data);
                let state = parsed
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|m| m.check(now.unix_timestamp(), &self.names.dns, &self.names.ips));
                (parsed.ok(), Some(state))
            }
        };
        let valid = matches!(state, Some(Ok(_)));
        let next_published = match (&current, valid) {
            (Some(material), true) => self.publish(material).await,
            _ => false,
        };
        let step = plan::decide(state.as_ref(), now.unix_timestamp(), &self.lifetimes, next_published);
        self.log_step(&step, state.as_ref());
        let base = if valid { current.as_ref() } else { None };
        let Some(written) = plan::material_for(&step, base, now, &self.names, &self.lifetimes)? else {
            return Ok(current.filter(|_| valid));
        };
        let data = written.to_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect();
        let result = match secret {
            None => {
                let mut new = Secret::default();
                new.metadata.name = Some(self.config.secret.clone());
                new.metadata.namespace = Some(self.config.namespace.clone());
                new.metadata.labels = Some([("app.kubernetes.io/managed-by".into(), "provgate".into())].into());
                new.type_ = Some("Opaque".into());
                new.data = Some(data);
                self.secrets.create(&PostParams::default(), &new).await.map(drop)
            }
            Some(mut old) => {
                // The resourceVersion read above stays in the object: a replica that wrote since makes this a
                // conflict, never a lost update.
                old.data = Some(data);
                old.string_data = None;
                self.secrets.replace(&self.config.secret, &PostParams::default(), &old).await.map(drop)
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(secret = %self.source(), ?step, "managed TLS Secret written");
                self.publish(&written).await;
                Ok(Some(written))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(secret = %self.source(), ?step, "another replica wrote the Secret first; reading it again");
                Ok(None)
            }
            Err(e) => Err(self.api("write", e)),
        }
    }

    fn log_step(&self, step: &Step, state: Option<&Result<Facts, MaterialError>>) {
        match step {
            Step::Keep => {}
            Step::Create => {
                tracing::info!(secret = %self.source(), "no managed TLS Secret; creating a CA and serving pair")
            }
            Step::Replace(why) => {
                tracing::warn!(secret = %self.source(), problem = %why, "the managed TLS Secret cannot be served; replacing it with a new CA and serving pair (it is never served or published as it is)")
            }
            Step::RenewLeaf(why) => {
                tracing::info!(secret = %self.source(), reason = *why, facts = ?state, "renewing the serving certificate")
            }
            Step::AddNextCa => {
                tracing::info!(secret = %self.source(), "the CA nears its end; publishing a new CA beside it")
            }
            Step::PromoteNextCa => {
                tracing::info!(secret = %self.source(), "the new CA is published; it now signs the serving certificate")
            }
        }
    }

    fn api(&self, what: &str, source: kube::Error) -> ManagedTlsError {
        ManagedTlsError::Api { what: format!("{what} {}", self.source()), source }
    }

    /// Writes `material`'s bundle into every named webhook configuration that lacks it. True when every one of
    /// them holds it afterwards.
    async fn publish(&self, material: &Material) -> bool {
        let bundle = base64::engine::general_purpose::STANDARD.encode(material.bundle_pem());
        let mut all = true;
        for name in &self.config.webhooks.validating {
            all &= publish_to(&self.validating, name, &bundle).await;
        }
        for name in &self.config.webhooks.mutating {
            all &= publish_to(&self.mutating, name, &bundle).await;
        }
        all
    }

    /// Follows the Secret with a watch and sends every servable pair it holds to `tx`. A Secret that cannot be
    /// served is logged and skipped: the previous pair keeps serving. Runs until dropped.
    pub async fn follow(self, tx: tokio::sync::watch::Sender<Pair>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.config.secret));
        let mut events = watcher::watcher(self.secrets.clone(), config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let secret = match event {
                Ok(Event::InitApply(secret) | Event::Apply(secret)) => secret,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(secret = %self.source(), %error, "watch of the managed TLS Secret failed; retrying");
                    continue;
                }
            };
            let data: std::collections::BTreeMap<String, Vec<u8>> =
                secret.data.into_iter().flatten().map(|(k, v)| (k, v.0)).collect();
            let now = chrono::Utc::now().timestamp();
            match Material::from_data(&data).and_then(|m| m.check(now, &self.names.dns, &self.names.ips).map(|_| m)) {
                Ok(material) => {
                    tx.send_if_modified(|current| {
                        let pair = pair_of(&material);
                        let changed = *current != pair;
                        *current = pair;
                        changed
                    });
                }
                Err(problem) => {
                    tracing::warn!(secret = %self.source(), %problem, "the managed TLS Secret cannot be served; keeping the current pair")
                }
            }
        }
    }
}

fn pair_of(material: &Material) -> Pair {
    Pair { cert: material.cert_pem.clone().into_bytes(), key: material.key_pem.clone().into_bytes() }
}

/// Publishes `bundle` (base64) into the webhook configuration `name` of `api`'s kind; true when it holds it.
async fn publish_to<K>(api: &kube::Api<K>, name: &str, bundle: &str) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let object = match api.get_opt(name).await {
        Ok(Some(object)) => object,
        Ok(None) => {
            tracing::warn!(%kind, %name, "webhook configuration not found; its caBundle is written once it exists");
            return false;
        }
        Err(error) => {
            tracing::warn!(%kind, %name, %error, "cannot read the webhook configuration");
            return false;
        }
    };
    let Ok(value) = serde_json::to_value(&object) else { return false };
    let Some(patch) = bundle_patch(&value, bundle) else { return true };
    match api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(_) => {
            tracing::info!(%kind, %name, "caBundle written");
            true
        }
        Err(error) => {
            tracing::warn!(%kind, %name, %error, "cannot write caBundle; retrying at the next check");
            false
        }
    }
}

/// The strategic-merge patch that sets `caBundle` (base64) on each webhook of the configuration `object` that
/// does not hold it, preconditioned on the resourceVersion read; `None` when every webhook holds it already.
pub fn bundle_patch(object: &Value, bundle: &str) -> Option<Value> {
    let stale: Vec<Value> = object["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["clientConfig"]["caBundle"].as_str() != Some(bundle))
        .filter_map(|w| w["name"].as_str())
        .map(|name| json!({"name": name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    if stale.is_empty() {
        return None;
    }
    Some(json!({"metadata": {"resourceVersion": object["metadata"]["resourceVersion"]}, "webhooks": stale}))
}
