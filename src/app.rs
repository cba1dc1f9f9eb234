//! Composition root: builds the stores, clients and servers from a [`Config`] and starts them. No logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::{self, Admin};
use crate::admission::{self, Webhook, server};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::credentials::PullSecrets;
use crate::engine::{Engine, ReviewLimits};
use crate::evidence::fetch::Fetcher;
use crate::gather::{GatherMetrics, Gatherer};
use crate::keys::{KeyRef, KeyStore, SecretRef, SecretWatch};
use crate::managed_tls::ManagedTls;
use crate::metrics::Metrics;
use crate::policy::trust::AuthoritySource;
use crate::policy::{self, PolicyStore};
use crate::registry::{RegistryClient, RegistryMetrics};
use crate::{certs, events, tls};

/// Connections open at once on the admin port (probes and metrics scrapes).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Where the embedded default keeps its self-signed serving pair.
pub const DEFAULT_CERT_DIR: &str = "certs";

/// The running servers and their bound addresses.
pub struct Running {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub policies: Arc<PolicyStore>,
    /// The decision log, flushed at shutdown.
    pub audit: AuditLog,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish and their records be written for up to 5 s (the records
    /// get at least 0.5 s), and stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let server = self.server.abort_handle();
        if tokio::time::timeout_at(deadline, self.server).await.is_err() {
            tracing::warn!("reviews still in flight after 5 s; closing their connections");
            server.abort();
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(500));
        if !self.audit.flush(left).await {
            tracing::warn!(?left, "the audit log was not flushed in time; records still queued are lost");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Seeds, before serving, the entropy source of the TLS library, which would otherwise make the first handshake wait
/// (about a tenth of a second of CPU).
fn warm_up() {
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        let _ = provider.secure_random.fill(&mut [0u8; 16]);
    }
}

/// Loads policies, TLS and the audit log, binds both ports and serves in the background, using the Kubernetes
/// API of the cluster (or kubeconfig) if one answers.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, kube_client().await).await
}

/// [`start`] with a given Kubernetes client (None: no cluster).
pub async fn start_with(config: Config, kube: Option<kube::Client>) -> anyhow::Result<Running> {
    warm_up();
    let policies = Arc::new(PolicyStore::default());
    match policies.reload(&config.policies) {
        Ok(set) => {
            tracing::info!(path = %config.policies.display(), policies = set.policies().len(), generation = set.generation(), "policies loaded")
        }
        Err(errors) => {
            tracing::error!(path = %config.policies.display(), %errors, "policies do not load; not ready, denying every review until they do")
        }
    }
    // ImagePolicy objects join the files' set (loaded before the keys below, so their Secrets are watched too).
    let cluster = match &kube {
        Some(client) => Some(policy::cluster::start(client.clone(), policies.clone(), config.policy_poll).await),
        None => None,
    };
    let reload = config.tls.reload_interval.unwrap_or(Duration::from_secs(30));
    let mut tasks = vec![tokio::spawn(policies.clone().watch(config.policies.clone(), config.policy_poll))];
    tasks.extend(cluster);
    let server_tls = serving_tls(&config, kube.clone(), reload, &mut tasks).await?;
    let registries = RegistryMetrics::new(config.registries.hosts.keys());
    let mut metrics = Metrics::new(GatherMetrics::default(), registries);
    metrics.register_certificate_expiry(server_tls.expiry());
    metrics.register_policies(policies.clone());
    // Denials and warnings as Kubernetes Events, when there is a cluster (the task stops with its last handle).
    let events = kube.clone().map(events::publish::start);
    if let Some((events, _)) = &events {
        metrics.register_events_dropped(events.dropped());
    }
    if let Some(ca) = &config.tls.client_ca_file {
        tracing::info!(client_ca = %ca.display(), "clients must present a certificate issued by this CA");
    }
    let audit = AuditLog::open(&config.audit, metrics.audit.clone())
        .with_context(|| format!("audit log {:?}", config.audit.log))?;
    let keys = key_store(&policies, kube.clone()).await;
    tasks.push(tokio::spawn(track_secrets(policies.clone(), keys.clone(), config.policy_poll)));
    metrics.register_keys(keys.clone());
    let engine = engine_with(&config, policies.clone(), keys, kube, Some(&metrics))?;
    let metrics = Arc::new(metrics);
    let mut webhook = Webhook::new(engine, audit.clone(), metrics.clone(), &config);
    if let Some((events, publisher)) = events {
        webhook.events = events;
        tasks.push(publisher);
    }
    let webhook = Arc::new(webhook);

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listen {}", config.listen))?;
    let https = listener.local_addr()?;
    let limits = server::Limits {
        max_connections: config.server.max_connections,
        header_read_timeout: config.server.header_read_timeout,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server =
        tokio::spawn(server::serve(listener, Some(server_tls), admission::router(webhook), limits, stopped.clone()));

    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin listen {}", config.admin_listen))?;
    let admin = admin_listener.local_addr()?;
    let admin_app = admin::router(Admin { policies: policies.clone(), metrics });
    // Probes and scrapes need few connections; the cap keeps a flood there from exhausting descriptors.
    let admin_limits = server::Limits { max_connections: ADMIN_MAX_CONNECTIONS, ..limits };
    tasks.push(tokio::spawn(server::serve(admin_listener, None, admin_app, admin_limits, stopped)));
    tracing::info!(%https, %admin, "serving");
    Ok(Running { https, admin, policies, audit, stop, server, tasks })
}

/// The engine for one-shot commands (`provgate verify`): like `serve`'s, reading Secrets through the cluster's API
/// only when the policies name `k8s://` keys or the config names pull secrets.
pub async fn oneshot_engine(config: &Config, policies: Arc<PolicyStore>) -> anyhow::Result<Engine> {
    let refs = secret_refs(&policies);
    let signature_secrets = policies.current().is_some_and(|set| {
        set.policies().iter().any(|p| p.signatures.as_ref().is_some_and(|s| !s.pull_secrets().is_empty()))
    });
    let wants_cluster = !refs.is_empty()
        || signature_secrets
        || config.credentials.image_pull_secrets
        || !config.credentials.secrets.is_empty();
    let kube = if wants_cluster { kube_client().await } else { None };
    let keys = key_store(&policies, kube.clone()).await;
    engine_with(config, policies, keys, kube, None)
}

/// The engine with keys from `keys` and pull secrets read through `kube` (when there is a cluster), counting
/// verifications and registry requests into `metrics` when given.
pub fn engine_with(
    config: &Config,
    policies: Arc<PolicyStore>,
    keys: KeyStore,
    kube: Option<kube::Client>,
    metrics: Option<&Metrics>,
) -> anyhow::Result<Engine> {
    let mut registry = RegistryClient::new(config.registries.clone())?;
    if let Some(metrics) = metrics {
        registry = registry.with_metrics(metrics.registries.clone());
    }
    let pull_secrets = Arc::new(PullSecrets::new(kube, config.credentials.clone()));
    let registry: Arc<dyn crate::registry::Registry> = Arc::new(registry);
    let mut evidence =
        Fetcher::new(registry.clone(), &config.registries, &config.evidence).map_err(anyhow::Error::msg)?;
    let mut gatherer = Gatherer::new(registry, keys, config.cache).with_pull_secrets(pull_secrets.clone());
    if let Some(metrics) = metrics {
        gatherer = gatherer.with_metrics(metrics.gather.clone());
        evidence = evidence.with_metrics(metrics.gather.cache.clone());
    }
    let gatherer = gatherer.with_evidence(Arc::new(evidence));
    let gatherer = Arc::new(gatherer);
    let limits = ReviewLimits { max_images: config.max_images_per_review, max_object_bytes: config.max_object_bytes };
    Ok(Engine::new(policies, config.no_match, config.deadline, gatherer, pull_secrets, limits))
}

/// A client for the cluster provgate runs in (or the kubeconfig's), if one answers; None without a cluster.
async fn kube_client() -> Option<kube::Client> {
    match tokio::time::timeout(Duration::from_secs(5), kube::Client::try_default()).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no Kubernetes API configured; k8s:// keys are unavailable");
            None
        }
        Err(_) => {
            tracing::warn!("the Kubernetes API did not answer in 5 s; k8s:// keys are unavailable");
            None
        }
    }
}

/// The Secrets the active policies name.
fn secret_refs(policies: &PolicyStore) -> Vec<SecretRef> {
    let Some(set) = policies.current() else { return Vec::new() };
    let mut refs: Vec<SecretRef> = set
        .policies()
        .iter()
        .flat_map(|p| p.authorities.iter())
        .filter_map(|a| match a {
            AuthoritySource::Key { key: KeyRef::Secret(r), .. } => Some(r.clone()),
            _ => None,
        })
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

/// A key store watching every Secret the active policies name, each loaded (or failed) before this returns, so
/// the first review does not meet a key that is still loading.
async fn key_store(policies: &PolicyStore, kube: Option<kube::Client>) -> KeyStore {
    let keys = KeyStore::new(kube.map(SecretWatch::new));
    for r in secret_refs(policies) {
        if let Err(error) = keys.ready(&r, Duration::from_secs(10)).await {
            tracing::warn!(secret = %r, %error, "key not available; images it must verify are denied until it is");
        }
    }
    keys
}

/// Keeps a watch on every Secret the active policies name, following policy reloads (watches of Secrets no longer
/// named are stopped).
async fn track_secrets(policies: Arc<PolicyStore>, keys: KeyStore, period: Duration) {
    let mut generation = policies.current().map(|s| s.generation().to_owned());
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let now = policies.current().map(|s| s.generation().to_owned());
        if now != generation {
            generation = now;
            let refs: Vec<KeyRef> = secret_refs(&policies).into_iter().map(KeyRef::Secret).collect();
            keys.track(&refs);
        }
    }
}

/// The HTTPS server's TLS: from the managed Secret (renewed and followed in the background) when `tls.managed` is
/// set, else from files (re-read every `reload`).
async fn serving_tls(
    config: &Config,
    kube: Option<kube::Client>,
    reload: Duration,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<tls::ServerTls> {
    let client_ca = config.tls.client_ca_file.clone();
    if let Some(managed) = &config.tls.managed {
        let kube = kube.context("tls.managed needs the Kubernetes API, and none answered")?;
        let managed = ManagedTls::new(kube, managed.clone());
        let pair = managed.ensure(MANAGED_TLS_READY_TIMEOUT).await?;
        let server_tls = tls::ServerTls::from_pair(&pair, &managed.source(), client_ca.clone())?;
        let (pairs, followed) = tokio::sync::watch::channel(pair);
        tasks.push(tokio::spawn(server_tls.clone().follow(followed, managed.source(), client_ca, reload)));
        tasks.push(tokio::spawn(managed.clone().follow(pairs)));
        tasks.push(tokio::spawn(managed.run()));
        return Ok(server_tls);
    }
    let (cert, key) = serving_pair(config)?;
    let files = tls::TlsFiles { cert, key, client_ca };
    let server_tls = tls::ServerTls::load(&files)?;
    tasks.push(tokio::spawn(server_tls.clone().watch(files, reload)));
    Ok(server_tls)
}

/// How long start-up waits for the managed Secret to hold a servable pair.
pub const MANAGED_TLS_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The configured serving pair, or the embedded default's self-signed one under `./certs`.
fn serving_pair(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        return Ok((cert.clone(), key.clone()));
    }
    let (cert, key, created) = certs::ensure_loopback_pair(std::path::Path::new(DEFAULT_CERT_DIR))?;
    if created {
        tracing::info!(cert = %cert.display(), "created a self-signed serving certificate for localhost (CA in certs/ca.crt)");
    }
    Ok((cert, key))
}
