//! Composition root: builds the stores, clients and servers from a [`Config`] and starts them. No logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::{self, Admin};
use crate::admission::{self, Webhook};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::engine::Engine;
use crate::evidence::{Gatherer, NoCluster};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::registry::RegistryClient;
use crate::{certs, tls};

/// Where the embedded default keeps its self-signed serving pair.
pub const DEFAULT_CERT_DIR: &str = "certs";

/// The running servers and their bound addresses.
pub struct Running {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub policies: Arc<PolicyStore>,
    handle: axum_server::Handle<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish for up to 5 s, and stops the background tasks.
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Loads policies, TLS and the audit log, binds both ports and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let policies = Arc::new(PolicyStore::default());
    match policies.reload(&config.policies) {
        Ok(set) => {
            tracing::info!(path = %config.policies.display(), policies = set.policies().len(), generation = set.generation(), "policies loaded")
        }
        Err(errors) => {
            tracing::error!(path = %config.policies.display(), %errors, "policies do not load; not ready, denying every review until they do")
        }
    }
    let metrics = Arc::new(Metrics::default());
    let (cert, key) = serving_pair(&config)?;
    let tls_config = tls::load(&cert, &key).await?;
    let reload = config.tls.reload_interval.unwrap_or(Duration::from_secs(30));
    let mut tasks = vec![
        tokio::spawn(policies.clone().watch(config.policies.clone(), config.policy_poll)),
        tokio::spawn(tls::watch(tls_config.clone(), cert, key, reload)),
    ];
    let audit = AuditLog::open(config.audit.log.as_deref())
        .await
        .with_context(|| format!("audit log {:?}", config.audit.log))?;
    let registry = Arc::new(RegistryClient::new(config.registries.clone())?);
    let gatherer = Arc::new(Gatherer::new(registry, Arc::new(NoCluster), config.cache));
    let engine = Engine { policies: policies.clone(), no_match: config.no_match, deadline: config.deadline, gatherer };
    let webhook = Arc::new(Webhook { engine, audit, metrics: metrics.clone(), max_body: config.max_request_bytes });

    let listener = std::net::TcpListener::bind(config.listen).with_context(|| format!("listen {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let https = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls_config)?.handle(handle.clone());
    let app = admission::router(webhook);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "HTTPS server stopped");
        }
    }));

    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin listen {}", config.admin_listen))?;
    let admin = admin_listener.local_addr()?;
    let admin_app = admin::router(Admin { policies: policies.clone(), metrics });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin_app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }));
    tracing::info!(%https, %admin, "serving");
    Ok(Running { https, admin, policies, handle, tasks })
}

/// The review engine over `policies`, with the registry client and caches the config describes.
pub fn engine(config: &Config, policies: Arc<PolicyStore>) -> anyhow::Result<Engine> {
    let registry = Arc::new(RegistryClient::new(config.registries.clone())?);
    let gatherer = Arc::new(Gatherer::new(registry, Arc::new(NoCluster), config.cache));
    Ok(Engine { policies, no_match: config.no_match, deadline: config.deadline, gatherer })
}

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
