//! Gathers what the policies need for each image, concurrently under one deadline: the digest a tag names, the
//! signature and attestation layers stored beside it (bounded TTL caches, one fetch in flight per key), and the
//! keys of the authorities that judge it. All I/O of a review happens here; judging happens in `decide`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use crate::artifact::Artifacts;
use crate::decide::{Plan, Step};
use crate::images::{Digest, ImageRef};
use crate::keys::KeyStore;
use crate::policy::Policy;
use crate::policy::authority::AuthoritySource;
use crate::reason::Reason;
use crate::registry::{Budget, Credentials, Keychain, Registry, RegistryError, Resolved};
use crate::verify::Authority;

/// What the registry holds for one image.
#[derive(Debug, Clone)]
pub struct ImageEvidence {
    /// The digest that was verified (for a multi-arch tag: the index).
    pub digest: Digest,
    /// Platform manifest digests of an index (BuildKit attestation manifests excluded).
    pub platforms: Vec<Digest>,
    pub artifacts: Arc<Artifacts>,
    /// Artifacts of each platform manifest, fetched only when a policy requires every platform to be covered.
    pub platform_artifacts: Vec<(Digest, Arc<Artifacts>)>,
}

impl ImageEvidence {
    /// Digests an attestation subject may name: the image's own, then its platform manifests'.
    pub fn acceptable_digests(&self) -> Vec<Digest> {
        std::iter::once(self.digest.clone()).chain(self.platforms.iter().cloned()).collect()
    }
}

/// Authorities resolved for one review, by (policy, authority) name.
pub type Authorities = HashMap<(String, String), Result<Arc<Authority>, Reason>>;

/// Everything gathered for one plan; `images[i]` belongs to `plan.images[i]` and is None where no evidence was
/// needed.
#[derive(Debug, Default)]
pub struct Gathered {
    pub images: Vec<Option<Result<Arc<ImageEvidence>, Reason>>>,
    pub authorities: Authorities,
}

/// Cache sizes and lifetimes (config `cache:`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// Entries per cache (resolved references; artifact sets).
    pub max_entries: u64,
    /// How long a tag stays resolved to a digest.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long the artifacts found for a digest are reused.
    #[serde(with = "humantime_serde")]
    pub artifacts_ttl: Duration,
    /// Images fetched at once across all reviews; more wait their turn (within their deadline).
    pub max_concurrent_fetches: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            tag_ttl: Duration::from_secs(60),
            artifacts_ttl: Duration::from_secs(300),
            max_concurrent_fetches: 64,
        }
    }
}

pub struct Gatherer {
    registry: Arc<dyn Registry>,
    keys: KeyStore,
    /// (reference, credentials identity) -> what it resolved to.
    resolved: moka::future::Cache<(String, String), Arc<Resolved>>,
    /// (repository, digest, credentials identity) -> its artifacts.
    artifacts: moka::future::Cache<(String, Digest, String), Arc<Artifacts>>,
    /// Bounds the images being fetched at once, so a burst of reviews cannot open unbounded connections.
    fetching: tokio::sync::Semaphore,
}

impl Gatherer {
    pub fn new(registry: Arc<dyn Registry>, keys: KeyStore, cache: CacheConfig) -> Self {
        let resolved =
            moka::future::Cache::builder().max_capacity(cache.max_entries).time_to_live(cache.tag_ttl).build();
        let artifacts =
            moka::future::Cache::builder().max_capacity(cache.max_entries).time_to_live(cache.artifacts_ttl).build();
        let fetching = tokio::sync::Semaphore::new(cache.max_concurrent_fetches.max(1));
        Self { registry, keys, resolved, artifacts, fetching }
    }

    /// Gathers evidence for every image a policy needs it for, all at once, within `deadline`.
    /// `keychain` holds the review's pull credentials; hosts it does not name use the config's.
    pub async fn gather(&self, plan: &Plan, keychain: &Keychain, deadline: Instant, budget: Duration) -> Gathered {
        let mut authorities = Authorities::new();
        let bytes = self.registry.budget();
        let jobs = plan.images.iter().map(|planned| async {
            let Step::Judge { image, policies } = &planned.step else { return None };
            let needing: Vec<&Arc<Policy>> = policies.iter().filter(|p| p.needs_evidence()).collect();
            if needing.is_empty() {
                return None;
            }
            let every_platform =
                needing.iter().any(|p| p.requirements.platforms == crate::policy::require::Platforms::All);
            let creds = keychain.for_host(image.registry());
            let work = self.image(image, &creds, every_platform, &bytes, deadline);
            Some(match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result.map(Arc::new),
                Err(_) => Err(Reason::DeadlineExceeded(budget)),
            })
        });
        for planned in &plan.images {
            if let Step::Judge { policies, .. } = &planned.step {
                for policy in policies {
                    for source in &policy.authorities {
                        let key = (policy.name.clone(), source.name().to_owned());
                        authorities.entry(key).or_insert_with(|| self.authority(source));
                    }
                }
            }
        }
        Gathered { images: join_all(jobs).await, authorities }
    }

    /// The registry data of one image (digest, platforms, artifacts), as `gather` would fetch it (cached).
    pub async fn inspect(&self, image: &ImageRef, deadline: Instant) -> Result<Arc<ImageEvidence>, Reason> {
        let bytes = self.registry.budget();
        self.image(image, &Credentials::Anonymous, false, &bytes, deadline).await.map(Arc::new)
    }

    fn authority(&self, source: &AuthoritySource) -> Result<Arc<Authority>, Reason> {
        match source {
            AuthoritySource::Ready(authority) => Ok(authority.clone()),
            AuthoritySource::Key { name, key } => {
                let unavailable = |detail: String| Reason::KeyUnavailable { authority: name.clone(), detail };
                let keys = self.keys.key_set(std::slice::from_ref(key)).map_err(|e| unavailable(e.to_string()))?;
                Ok(Arc::new(Authority::keys(name.clone(), keys)))
            }
        }
    }

    async fn image(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        every_platform: bool,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<ImageEvidence, Reason> {
        let _permit = self
            .fetching
            .acquire()
            .await
            .map_err(|_| Reason::Unmet { code: "shutting-down", message: "provgate is shutting down; retry".into() })?;
        let identity = creds.fingerprint();
        let resolved = self
            .resolved
            .try_get_with((image.to_string(), identity.clone()), async {
                self.registry.resolve(image, creds, bytes, deadline).await.map(Arc::new)
            })
            .await
            .map_err(|e| registry_reason(image, &e))?;
        let digest = resolved.digest.clone();
        let platforms: Vec<Digest> = resolved
            .platforms
            .iter()
            .filter(|p| p.os != "unknown" && p.architecture != "unknown")
            .map(|p| p.digest.clone())
            .collect();
        let wanted = std::iter::once(digest.clone()).chain(platforms.iter().filter(|_| every_platform).cloned());
        let fetches = wanted.map(|d| {
            let identity = identity.clone();
            async move {
                let key = (image.name(), d.clone(), identity);
                let found = self
                    .artifacts
                    .try_get_with(key, async {
                        self.registry.artifacts(image, &d, creds, bytes, deadline).await.map(Arc::new)
                    })
                    .await
                    .map_err(|e| registry_reason(image, &e))?;
                Ok::<_, Reason>((d, found))
            }
        });
        let mut fetched = futures::future::try_join_all(fetches).await?.into_iter();
        let artifacts = fetched.next().map(|(_, a)| a).unwrap_or_default();
        Ok(ImageEvidence { digest, platforms, artifacts, platform_artifacts: fetched.collect() })
    }
}

fn registry_reason(image: &ImageRef, error: &RegistryError) -> Reason {
    Reason::Registry { image: image.to_string(), code: error.code(), detail: error.to_string() }
}
