//! Gathers what the policies need for each image, concurrently under one deadline: the digest a tag names, the
//! signature and attestation layers stored beside it (bounded TTL caches, one fetch in flight per key), and the
//! keys of the authorities that judge it. All I/O of a review happens here; judging happens in `decide`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::time::Instant;

use crate::artifact::Artifacts;
use crate::decide::{Plan, Step};
use crate::images::{Digest, ImageRef};
use crate::keys::KeyStore;
use crate::policy::Policy;
use crate::flights::Flights;
use crate::policy::authority::AuthoritySource;
use crate::policy::require::Platforms;
use crate::reason::Reason;
use crate::registry::{Credentials, Keychain, Registry, RegistryError, Resolved};
use crate::verify::{self, Authority};

/// What the registry holds for one image.
#[derive(Debug, Clone)]
pub struct ImageEvidence {
    /// The digest that was verified (for a multi-arch tag: the index).
    pub digest: Digest,
    /// Platform manifest digests of an index (BuildKit attestation manifests excluded).
    pub platforms: Vec<Digest>,
    pub artifacts: Arc<Artifacts>,
    /// Artifacts of each platform manifest, fetched only when a policy requires every platform to be covered and
    /// the index verified under one of its authorities; empty otherwise.
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
    /// Entries per cache (manifests by digest; artifact sets).
    pub max_entries: u64,
    /// How long the artifacts found for a digest are reused.
    #[serde(with = "humantime_serde")]
    pub artifacts_ttl: Duration,
    /// Images fetched at once across all reviews; more wait their turn (within their deadline).
    pub max_concurrent_fetches: usize,
    /// Images of one review fetched at once, so one review cannot take every fetch slot.
    pub max_review_fetches: usize,
    /// Most platform manifests fetched for one image under `platforms: all`; an index with more is denied.
    pub max_platforms: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            artifacts_ttl: Duration::from_secs(300),
            max_concurrent_fetches: 64,
            max_review_fetches: 16,
            max_platforms: 32,
        }
    }
}

/// Platform manifests of one image fetched at once.
const PLATFORMS_AT_ONCE: usize = 4;

pub struct Gatherer {
    registry: Arc<dyn Registry>,
    keys: KeyStore,
    config: CacheConfig,
    /// (reference with digest, credentials identity) -> what it names. Content-addressed, so it cannot go stale.
    manifests: moka::future::Cache<(String, String), Arc<Resolved>>,
    /// Tags in flight: a tag is resolved at every review (it may point elsewhere now), concurrent reviews of the
    /// same tag sharing one request.
    tags: Flights<(String, String), Result<Arc<Resolved>, RegistryError>>,
    /// (repository, digest, credentials identity) -> its artifacts.
    artifacts: moka::future::Cache<(String, Digest, String), Arc<Artifacts>>,
    /// Bounds the images being fetched at once, so a burst of reviews cannot open unbounded connections.
    fetching: tokio::sync::Semaphore,
}

impl Gatherer {
    pub fn new(registry: Arc<dyn Registry>, keys: KeyStore, cache: CacheConfig) -> Self {
        let manifests = moka::future::Cache::builder().max_capacity(cache.max_entries).build();
        let artifacts =
            moka::future::Cache::builder().max_capacity(cache.max_entries).time_to_live(cache.artifacts_ttl).build();
        let fetching = tokio::sync::Semaphore::new(cache.max_concurrent_fetches.max(1));
        Self { registry, keys, config: cache, manifests, tags: Flights::default(), artifacts, fetching }
    }

    /// Gathers evidence for every image a policy needs it for, all at once, within `deadline`.
    /// `keychain` holds the review's pull credentials; hosts it does not name use the config's.
    pub async fn gather(&self, plan: &Plan, keychain: &Keychain, deadline: Instant, budget: Duration) -> Gathered {
        let mut authorities = Authorities::new();
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
        let review = tokio::sync::Semaphore::new(self.config.max_review_fetches.max(1));
        let jobs = plan.images.iter().map(|planned| async {
            let Step::Judge { image, policies } = &planned.step else { return None };
            let needing: Vec<&Arc<Policy>> = policies.iter().filter(|p| p.needs_evidence()).collect();
            if needing.is_empty() {
                return None;
            }
            // The authorities of the policies that require every platform: the index must verify under one of
            // them before its platforms are fetched.
            let every_platform: Vec<Authority> = needing
                .iter()
                .filter(|p| p.requirements.platforms == Platforms::All)
                .flat_map(|p| p.authorities.iter().map(|a| (p.name.clone(), a.name().to_owned())))
                .filter_map(|key| authorities.get(&key)?.as_ref().ok().map(|a| Authority::clone(a)))
                .collect();
            let creds = keychain.for_host(image.registry());
            let work = async {
                let _slot = review.acquire().await.map_err(|_| shutting_down())?;
                self.image(image, &creds, &every_platform, deadline).await
            };
            Some(match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result.map(Arc::new),
                Err(_) => Err(Reason::DeadlineExceeded(budget)),
            })
        });
        let images = join_all(jobs).await;
        Gathered { images, authorities }
    }

    /// The registry data of one image (digest, platforms, artifacts), as `gather` would fetch it (cached).
    pub async fn inspect(&self, image: &ImageRef, deadline: Instant) -> Result<Arc<ImageEvidence>, Reason> {
        self.image(image, &Credentials::Anonymous, &[], deadline).await.map(Arc::new)
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

    /// What `image` names now: a digest reference from the cache (content never changes), a tag from the registry
    /// at every review.
    async fn resolve(&self, image: &ImageRef, creds: &Credentials, deadline: Instant) -> Result<Arc<Resolved>, Reason> {
        let key = (image.to_string(), creds.fingerprint());
        let registry = self.registry.clone();
        let (owned, creds) = (image.clone(), creds.clone());
        let fetch = async move { registry.resolve(&owned, &creds, deadline).await.map(Arc::new) };
        let answer = if image.digest().is_some() {
            self.manifests.try_get_with(key, fetch).await.map_err(|e| RegistryError::clone(&e))
        } else {
            self.tags.run(key, deadline, || fetch).await
        };
        answer.map_err(|e| registry_reason(image, &e))
    }

    async fn artifacts_of(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        deadline: Instant,
    ) -> Result<Arc<Artifacts>, Reason> {
        let key = (image.name(), digest.clone(), creds.fingerprint());
        self.artifacts
            .try_get_with(key, async { self.registry.artifacts(image, digest, creds, deadline).await.map(Arc::new) })
            .await
            .map_err(|e| registry_reason(image, &e))
    }

    /// Resolves `image` and fetches its artifacts; under `every_platform` authorities, also those of each platform
    /// manifest, but only once the index verified under one of them, and for at most `maxPlatforms` platforms.
    async fn image(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        every_platform: &[Authority],
        deadline: Instant,
    ) -> Result<ImageEvidence, Reason> {
        let _permit = self.fetching.acquire().await.map_err(|_| shutting_down())?;
        let resolved = self.resolve(image, creds, deadline).await?;
        let digest = resolved.digest.clone();
        let platforms: Vec<Digest> = resolved
            .platforms
            .iter()
            .filter(|p| p.os != "unknown" && p.architecture != "unknown")
            .map(|p| p.digest.clone())
            .collect();
        let artifacts = self.artifacts_of(image, &digest, creds, deadline).await?;
        let mut platform_artifacts = Vec::new();
        let index_vouched = || !verify::signatures(&artifacts, &digest, every_platform).verified.is_empty();
        if !every_platform.is_empty() && !platforms.is_empty() && index_vouched() {
            if platforms.len() > self.config.max_platforms {
                let (count, max) = (platforms.len(), self.config.max_platforms);
                return Err(Reason::TooManyPlatforms { image: image.to_string(), count, max });
            }
            let fetches = platforms.iter().cloned().map(|d| async move {
                let found = self.artifacts_of(image, &d, creds, deadline).await?;
                Ok::<_, Reason>((d, found))
            });
            platform_artifacts = futures::stream::iter(fetches).buffered(PLATFORMS_AT_ONCE).try_collect().await?;
        }
        Ok(ImageEvidence { digest, platforms, artifacts, platform_artifacts })
    }
}

fn shutting_down() -> Reason {
    Reason::Unmet { code: "shutting-down", message: "provgate is shutting down; retry".into() }
}

fn registry_reason(image: &ImageRef, error: &RegistryError) -> Reason {
    Reason::Registry { image: image.to_string(), code: error.code(), detail: error.to_string() }
}
