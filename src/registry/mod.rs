//! OCI registry access (tag → digest, platforms, cosign tags, referrers); the only module that imports `oci_client`.

mod artifacts;
mod auth;
mod budget;
mod config;
mod content;
mod error;
#[cfg(any(test, feature = "test-registry"))]
pub mod memory;
mod token;
mod transport;

pub(crate) use transport::error_chain;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oci_client::manifest::OciImageIndex;
use reqwest::StatusCode;
use reqwest::header;
use tokio::time::Instant;

pub use auth::{Credentials, CredentialsError, HostCredentials};
pub use budget::Budget;
pub use config::{HostConfig, RegistryConfig};
pub use content::ContentKind;
pub use error::RegistryError;

use crate::artifact::Artifacts;
use crate::images::{Digest, ImageRef};
use artifacts::{check_header_digest, expect_ok, parse, parse_digest};
use budget::Pool;
use transport::{HostTransport, Reply, Session, Want, check_digest};
pub use transport::{MAX_OTHER_REGISTRIES, RegistryMetrics, RequestKind, RequestStatus};

/// Image index media types (OCI index, Docker manifest list).
pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// The full Accept list for manifests: without the index types some registries answer with a converted manifest whose
/// digest is not the one the kubelet pulls or the signer signed.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// What a reference points at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The digest of the manifest the reference names (for a multi-arch tag: the index).
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// For an index or manifest list: its platform manifests, in index order. Empty for a single manifest.
    pub platforms: Vec<PlatformManifest>,
}

impl Resolved {
    pub fn is_index(&self) -> bool {
        INDEX_TYPES.contains(&self.media_type.as_str())
    }
}

/// What a reference names right now: the answer to one HEAD of a tag, never cached by the registry client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    /// The manifest digest (for a multi-arch tag: the index).
    pub digest: Digest,
    /// The manifest's media type as the registry states it; `None` for a digest reference (nothing was asked) or
    /// when the registry did not say.
    pub media_type: Option<String>,
}

impl Head {
    /// Whether [`Registry::manifest`] must be read to know what this is (an index's platforms, or an unknown type).
    pub fn needs_manifest(&self) -> bool {
        self.media_type.as_deref().is_none_or(|mt| mt.is_empty() || INDEX_TYPES.contains(&mt))
    }
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformManifest {
    pub digest: Digest,
    pub media_type: String,
    /// `unknown` when the entry names no platform (e.g. BuildKit attestation manifests).
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Registry access as one value shared by every review. Every call of a review takes the review's [`Budget`] and
/// deadline; `Credentials::Anonymous` falls back to the credentials the config names for the host.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// A fresh byte budget for one review (`registries.maxReviewBytes`, drawing on the process-wide
    /// `registries.maxBytesInFlight`, given back when the last clone is dropped).
    fn budget(&self) -> Budget;

    /// The digest a tag names now, with one HEAD (a GET when the HEAD answer names no digest), and the media type
    /// the registry states. For a digest reference: that digest, without a request. Never cached here: a tag may move
    /// between two reviews.
    async fn head(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Head, RegistryError>;

    /// The manifest `digest` in `image`'s repository, read and checked against the digest: its media type and, for an
    /// index, its platform manifests. Content-addressed, so safe to cache by (repository, digest, identity).
    async fn manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Resolved, RegistryError>;

    /// [`Registry::head`], then [`Registry::manifest`] when the head does not tell everything.
    async fn resolve(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Resolved, RegistryError> {
        let head = self.head(image, creds, budget, deadline).await?;
        match head.media_type {
            Some(media_type) if !head.needs_manifest() => {
                Ok(Resolved { digest: head.digest, media_type, platforms: Vec::new() })
            }
            _ => self.manifest(image, &head.digest, creds, budget, deadline).await,
        }
    }

    /// The signature, attestation and bundle layers stored for `digest` in `image`'s repository. No artifacts is an
    /// empty value, not an error. What is read counts against a per-image budget (`registries.maxImageBytes`) within
    /// `budget`; a blob listed several times is read once and shared.
    async fn artifacts(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        wanted: Wanted,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Artifacts, RegistryError>;

    /// The blob `digest` in `image`'s repository (evidence stored by digest), read within `max_bytes` (instead of
    /// `registries.maxBlobBytes`) and `budget`, and checked against the digest.
    async fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        max_bytes: u64,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError>;

    /// The exact bytes of the manifest or blob `digest` in `image`'s repository, checked against the digest and read
    /// within `max_bytes` (and the usual caps and `budget`); a longer one is cut: `TooLarge` with `max_bytes` as its
    /// limit. For content provgate interprets itself: a release list, the layers of a mounted artifact.
    #[allow(clippy::too_many_arguments)]
    async fn content(
        &self,
        image: &ImageRef,
        digest: &Digest,
        kind: ContentKind,
        max_bytes: u64,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError>;
}

/// Which artifacts a caller needs: where they are read from, and whether the `.att` tag is read too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wanted {
    pub storage: crate::artifact::Storage,
    /// Read the cosign `.att` tag (some governing policy requires an attestation); only with `storage.tags`.
    /// Referrers hold attestation bundles and signature bundles alike, so they are read whole either way.
    pub attestations: bool,
}

impl Wanted {
    /// Everything (for reports).
    pub const ALL: Self = Self { storage: crate::artifact::Storage::BOTH, attestations: true };

    /// Whether a layer read from `origin` is one this asks for.
    pub fn keeps(self, origin: &crate::artifact::Origin) -> bool {
        use crate::artifact::Origin;
        match origin {
            Origin::SigTag => self.storage.tags,
            Origin::AttTag => self.storage.tags && self.attestations,
            Origin::Referrer { .. } => self.storage.referrers,
        }
    }
}

/// The registry configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("registries.hosts.{host}.caBundle: cannot read {path}: {detail}")]
    CaBundle { host: String, path: String, detail: String },
    #[error("registries.hosts.{host}.dockerConfigJson: {path}: {detail}")]
    DockerConfig { host: String, path: String, detail: String },
    #[error("{0}")]
    Budgets(String),
}

/// The registry client: one per process, safe to use from many tasks at once.
pub struct RegistryClient {
    config: RegistryConfig,
    hosts: HashMap<String, HostTransport>,
    defaults: HostCredentials,
    /// Sessions keyed by (host, identity fingerprint): a token never serves another identity.
    sessions: moka::future::Cache<(String, String), Arc<Session>>,
    /// Bytes read from registries and held by reviews in progress (`registries.maxBytesInFlight`).
    pool: Pool,
    /// Counts every request to a registry.
    metrics: Arc<RegistryMetrics>,
}

impl RegistryClient {
    /// Reads the CA bundles and dockerconfigjson files the config names.
    pub fn new(config: RegistryConfig) -> Result<Self, SetupError> {
        config.check_budgets().map_err(SetupError::Budgets)?;
        let mut hosts = HashMap::new();
        let mut defaults = HostCredentials::default();
        for (host, hc) in &config.hosts {
            let ca_pem = match &hc.ca_bundle {
                Some(path) => {
                    let err = |detail: String| SetupError::CaBundle {
                        host: host.clone(),
                        path: path.display().to_string(),
                        detail,
                    };
                    let pem = read(path).map_err(err)?;
                    match reqwest::Certificate::from_pem_bundle(&pem) {
                        Ok(certs) if !certs.is_empty() => Some(pem),
                        Ok(_) => return Err(err("no PEM certificate in the file".to_owned())),
                        Err(e) => return Err(err(e.to_string())),
                    }
                }
                None => None,
            };
            if let Some(path) = &hc.docker_config_json {
                let err = |detail: String| SetupError::DockerConfig {
                    host: host.clone(),
                    path: path.display().to_string(),
                    detail,
                };
                let credentials =
                    HostCredentials::from_docker_config(&read(path).map_err(err)?).map_err(|e| err(e.to_string()))?;
                match credentials.for_host(host) {
                    Credentials::Anonymous => return Err(err(format!("has no entry for {host}"))),
                    creds => defaults.insert(host, creds),
                }
            }
            let transport = HostTransport { insecure: hc.insecure, ca_pem, token_realms: hc.token_realms.clone() };
            hosts.insert(auth::normalise_host(host), transport);
        }
        let sessions = moka::future::Cache::builder()
            .max_capacity(config.max_sessions)
            .time_to_idle(Duration::from_secs(30 * 60))
            .build();
        let pool = Pool::new(config.max_bytes_in_flight);
        let metrics = Arc::new(RegistryMetrics::new(config.hosts.keys()));
        Ok(Self { config, hosts, defaults, sessions, pool, metrics })
    }

    /// Counts requests into `metrics` (registered on the metrics endpoint).
    pub fn with_metrics(mut self, metrics: Arc<RegistryMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The credentials the config names for `host` (anonymous when none).
    pub fn default_credentials(&self, host: &str) -> Credentials {
        self.defaults.for_host(host)
    }

    async fn session(&self, host: &str, creds: &Credentials) -> Result<Arc<Session>, RegistryError> {
        let creds = match creds {
            Credentials::Anonymous => self.defaults.for_host(host),
            other => other.clone(),
        };
        let key = (host.to_owned(), creds.fingerprint());
        if let Some(s) = self.sessions.get(&key).await {
            return Ok(s);
        }
        let transport = self.hosts.get(&auth::normalise_host(host)).cloned().unwrap_or_default();
        let session = Arc::new(Session::new(host, &transport, creds, &self.config, self.metrics.clone())?);
        self.sessions.insert(key, session.clone()).await;
        Ok(session)
    }
}

#[async_trait::async_trait]
impl Registry for RegistryClient {
    fn budget(&self) -> Budget {
        Budget::review(&self.config, &self.pool)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(image = %image))]
    async fn head(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Head, RegistryError> {
        if let Some(digest) = image.digest() {
            return Ok(Head { digest: digest.clone(), media_type: None });
        }
        let s = self.session(image.registry(), creds).await?;
        let repo = image.repository();
        let tag = image.tag().unwrap_or("latest");
        let what = format!("manifest {repo}:{tag}");
        let url = s.url(repo, &format!("manifests/{tag}"));
        let head = s.request(Want::ManifestHead, repo, &url, &what, budget, deadline).await?;
        if head.status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound { registry: s.host().to_owned(), what });
        }
        let stated = head.header(header::HeaderName::from_static("docker-content-digest")).map(Digest::parse);
        if let (true, Some(Ok(digest))) = (head.status.is_success(), stated) {
            return Ok(Head { digest, media_type: media_type_of(&head) });
        }
        // No usable HEAD answer: GET the tag and hash what it returns.
        let reply = s.request(Want::Manifest, repo, &url, &what, budget, deadline).await?;
        expect_ok(&s, &reply, &what)?;
        check_header_digest(&s, &reply, &what)?;
        Ok(Head { digest: Digest::sha256_of(&reply.body), media_type: media_type_of(&reply) })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(image = %image, %digest))]
    async fn manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Resolved, RegistryError> {
        let s = self.session(image.registry(), creds).await?;
        let repo = image.repository();
        let what = format!("manifest {repo}@{digest}");
        let reply = manifest_by_digest(&s, repo, digest, &what, budget, deadline).await?;
        resolved(&s, digest.clone(), &reply, &what)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(image = %image, %digest))]
    async fn artifacts(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        wanted: Wanted,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Artifacts, RegistryError> {
        let s = self.session(image.registry(), creds).await?;
        let budget = budget.image(&self.config);
        // Boxed: the gather's state is kilobytes of nested requests, which the span and the trait's own box would
        // otherwise each move.
        Box::pin(artifacts::gather(&s, &self.config, image, digest, wanted, &budget, deadline)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(image = %image, %digest))]
    async fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        max_bytes: u64,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError> {
        let s = self.session(image.registry(), creds).await?;
        artifacts::get_blob(&s, Want::BlobAtMost(max_bytes), image.repository(), digest, budget, deadline).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(image = %image, %digest))]
    async fn content(
        &self,
        image: &ImageRef,
        digest: &Digest,
        kind: ContentKind,
        max_bytes: u64,
        creds: &Credentials,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError> {
        let s = self.session(image.registry(), creds).await?;
        content::read(&s, &self.config, image.repository(), digest, kind, max_bytes, budget, deadline).await
    }
}

/// GET a manifest by digest with the full Accept list; the bytes must hash to the digest.
pub(crate) async fn manifest_by_digest(
    s: &Session,
    repo: &str,
    digest: &Digest,
    what: &str,
    budget: &Budget,
    deadline: Instant,
) -> Result<Reply, RegistryError> {
    let url = s.url(repo, &format!("manifests/{digest}"));
    let reply = s.request(Want::Manifest, repo, &url, what, budget, deadline).await?;
    expect_ok(s, &reply, what)?;
    check_digest(s.host(), what, digest, &reply.body)?;
    Ok(reply)
}

/// The media type of a manifest answer: `Content-Type` without parameters, else the body's `mediaType`.
pub(crate) fn media_type_of(reply: &Reply) -> Option<String> {
    let from_header = reply
        .header(header::CONTENT_TYPE)
        .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_owned())
        .filter(|ct| ct.starts_with("application/vnd."));
    from_header.or_else(|| {
        serde_json::from_slice::<serde_json::Value>(&reply.body).ok()?.get("mediaType")?.as_str().map(str::to_owned)
    })
}

fn resolved(s: &Session, digest: Digest, reply: &Reply, what: &str) -> Result<Resolved, RegistryError> {
    let media_type = media_type_of(reply).unwrap_or_default();
    let mut platforms = Vec::new();
    if INDEX_TYPES.contains(&media_type.as_str()) {
        let index: OciImageIndex = parse(s, &reply.body, what)?;
        for entry in index.manifests {
            let (os, architecture, variant) = match entry.platform {
                Some(p) => (p.os.to_string(), p.architecture.to_string(), p.variant),
                None => ("unknown".to_owned(), "unknown".to_owned(), None),
            };
            platforms.push(PlatformManifest {
                digest: parse_digest(s, &entry.digest, what)?,
                media_type: entry.media_type,
                os,
                architecture,
                variant,
            });
        }
    }
    Ok(Resolved { digest, media_type, platforms })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}
