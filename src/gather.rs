//! Gathers what the policies need for each image, concurrently under one deadline, and verifies it: the digest a
//! tag names now, the signature and attestation layers stored beside it, and what each authority's keys or
//! identities verify of them, once per (digest, authority) and cached. All I/O of a review, and every signature
//! check, happens here; `decide` judges only [`Verification`]s, which hold nothing but `Verified` items and the
//! reasons layers were rejected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use futures::{StreamExt as _, TryStreamExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::artifact::Artifacts;
use crate::flights::Flights;
use crate::images::{Digest, ImageRef};
use crate::keys::KeyStore;
use crate::plan::{Plan, Step};
use crate::policy::Policy;
use crate::policy::require::Platforms;
use crate::policy::trust::AuthoritySource;
use crate::reason::Reason;
use crate::registry::{Budget, Credentials, Head, HostCredentials, Registry, RegistryError, Resolved, Wanted};
use crate::verify::{self, AttestationCheck, Authority, SignatureCheck};

/// What one authority verified of one manifest digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Bytes of the artifacts it was computed from: its weight in the cache (what verified is a part of them).
    pub bytes: u64,
    pub signatures: SignatureCheck,
    /// Statements whose subject is the digest or, for an index, one of its platform manifests (each statement's
    /// `matched` says which; `decide` counts the latter only when the index itself verified).
    pub attestations: AttestationCheck,
}

impl Verification {
    /// Verifies `artifacts` of `digest` (whose platform manifests, for an index, are `platforms`) under `authority`.
    pub fn of(artifacts: &Artifacts, digest: &Digest, platforms: &[Digest], authority: &Authority) -> Self {
        let acceptable: Vec<Digest> = std::iter::once(digest.clone()).chain(platforms.iter().cloned()).collect();
        let (signatures, attestations) = verify::check(artifacts, &acceptable, std::slice::from_ref(authority));
        Self { bytes: artifacts.bytes(), signatures, attestations }
    }
}

/// Verifications of one digest, by authority [`Authority::cache_key`].
pub type Verifications = HashMap<String, Arc<Verification>>;

/// What was verified for one image.
#[derive(Debug, Clone)]
pub struct ImageEvidence {
    /// The digest that was verified (for a multi-arch tag: the index).
    pub digest: Digest,
    /// Platform manifest digests of an index (BuildKit attestation manifests excluded).
    pub platforms: Vec<Digest>,
    /// What each authority of the governing policies verified of `digest`.
    pub verified: Verifications,
    /// What each authority verified of each platform manifest: present only when a policy requires every platform
    /// and the index verified under one of its authorities.
    pub platforms_verified: Option<Vec<(Digest, Verifications)>>,
}

/// What the registry holds for one image, for reports (`provgate verify`).
#[derive(Debug, Clone)]
pub struct Inspected {
    pub digest: Digest,
    pub platforms: Vec<Digest>,
    pub artifacts: Arc<Artifacts>,
}

/// Authorities resolved for one review, by (policy, authority) name.
pub type Authorities = HashMap<(String, String), Result<Arc<Authority>, Reason>>;

/// Everything gathered for one plan: evidence per image reference (an image written in several fields is gathered
/// once), and the authorities of the governing policies.
#[derive(Debug, Default)]
pub struct Gathered {
    pub images: HashMap<ImageRef, Result<Arc<ImageEvidence>, Reason>>,
    pub authorities: Authorities,
    /// The registry bytes this review read: held until the decision is made, so they count against the
    /// process-wide budget for as long as the review holds them.
    pub bytes: Option<Budget>,
}

/// Cache sizes and lifetimes (config `cache:`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// Manifests by digest kept (an index counts once per platform it lists).
    pub max_entries: u64,
    /// Bytes of artifacts kept, and (weighed by the same bytes) of what was verified of them.
    pub max_artifact_bytes: u64,
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
            max_artifact_bytes: 32 << 20,
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
    tags: Flights<(String, String), Result<Head, RegistryError>>,
    /// (repository, digest, credentials identity) -> its artifacts.
    artifacts: moka::future::Cache<(String, Digest, String, Wanted), Arc<Artifacts>>,
    /// (repository, digest, credentials identity, authority cache key) -> what that authority verified of them.
    verifications: moka::future::Cache<(String, Digest, String, String, Wanted), Arc<Verification>>,
    /// Bounds the images being fetched at once, so a burst of reviews cannot open unbounded connections.
    fetching: tokio::sync::Semaphore,
    /// Verifications computed, cache lookups, verification time.
    metrics: GatherMetrics,
}

impl Gatherer {
    pub fn new(registry: Arc<dyn Registry>, keys: KeyStore, cache: CacheConfig) -> Self {
        let weight = |n: u64| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let manifests = moka::future::Cache::builder()
            .max_capacity(cache.max_entries)
            .weigher(move |_, m: &Arc<Resolved>| weight(1 + m.platforms.len() as u64))
            .build();
        let artifacts = moka::future::Cache::builder()
            .max_capacity(cache.max_artifact_bytes)
            .weigher(move |_, a: &Arc<Artifacts>| weight(a.bytes()))
            .time_to_live(cache.artifacts_ttl)
            .build();
        let verifications = moka::future::Cache::builder()
            .max_capacity(cache.max_artifact_bytes)
            .weigher(move |_, v: &Arc<Verification>| weight(v.bytes))
            .time_to_live(cache.artifacts_ttl)
            .build();
        let fetching = tokio::sync::Semaphore::new(cache.max_concurrent_fetches.max(1));
        let tags = Flights::default();
        let metrics = GatherMetrics::default();
        Self { registry, keys, config: cache, manifests, tags, artifacts, verifications, fetching, metrics }
    }

    /// Counts into `metrics` (registered on the metrics endpoint by [`crate::metrics::Metrics::new`]).
    pub fn with_metrics(mut self, metrics: GatherMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Gathers evidence for every image a policy needs it for, all at once, within `deadline`.
    /// `credentials` holds the review's pull credentials; hosts it does not name use the config's.
    pub async fn gather(
        &self,
        plan: &Plan,
        credentials: &HostCredentials,
        deadline: Instant,
        budget: Duration,
    ) -> Gathered {
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
        let started = Instant::now();
        let bytes = self.registry.budget();
        let jobs = plan.to_gather().into_iter().map(|(image, needing)| {
            let of = |p: &&Arc<Policy>| -> Vec<Authority> {
                p.authorities
                    .iter()
                    .filter_map(|a| authorities.get(&(p.name.clone(), a.name().to_owned()))?.as_ref().ok())
                    .map(|a| Authority::clone(a))
                    .collect()
            };
            let mut all: Vec<Authority> = Vec::new();
            for a in needing.iter().flat_map(of) {
                if !all.iter().any(|known| known.cache_key() == a.cache_key()) {
                    all.push(a);
                }
            }
            // The authorities of the policies that require every platform: the index must verify under one of
            // them before its platforms are fetched.
            let every_platform: Vec<String> = needing
                .iter()
                .filter(|p| p.requirements.platforms == Platforms::All)
                .flat_map(of)
                .map(|a| a.cache_key())
                .collect();
            let creds = credentials.for_host(image.registry());
            // The `.att` tag is read only when some governing policy requires an attestation.
            let wanted = Wanted { attestations: needing.iter().any(|p| !p.requirements.attestations.is_empty()) };
            let (review, bytes) = (&review, &bytes);
            async move {
                let work = async {
                    let _slot = review.acquire().await.map_err(|_| shutting_down())?;
                    let authorities = Authorized { all: &all, every_platform: &every_platform, wanted };
                    self.image(image, &creds, &authorities, bytes, deadline).await
                };
                let result = match tokio::time::timeout_at(deadline, work).await {
                    Ok(result) => result.map(Arc::new),
                    Err(_) => Err(Reason::DeadlineExceeded(budget)),
                };
                self.metrics.image_seconds.observe(started.elapsed().as_secs_f64());
                (image.clone(), result)
            }
        });
        let images = join_all(jobs).await.into_iter().collect();
        Gathered { images, authorities, bytes: Some(bytes) }
    }

    /// The registry data of one image (digest, platforms, artifacts), as `gather` would fetch it (cached).
    pub async fn inspect(&self, image: &ImageRef, deadline: Instant) -> Result<Inspected, Reason> {
        let (creds, bytes) = (Credentials::Anonymous, self.registry.budget());
        let resolved = self.resolve(image, &creds, true, &bytes, deadline).await?;
        // What a review already fetched is reported as it is (everything it read, if it read everything);
        // otherwise everything is read.
        let key = |wanted| (image.name(), resolved.digest.clone(), creds.fingerprint(), wanted);
        let cached = match self.artifacts.get(&key(Wanted::ALL)).await {
            Some(all) => Some(all),
            None => self.artifacts.get(&key(NO_ATT)).await,
        };
        let artifacts = match cached {
            Some(found) => found,
            None => self.artifacts_of(image, &resolved.digest, &creds, Wanted::ALL, &bytes, deadline).await?,
        };
        Ok(Inspected { digest: resolved.digest.clone(), platforms: platforms_of(&resolved), artifacts })
    }

    fn authority(&self, source: &AuthoritySource) -> Result<Arc<Authority>, Reason> {
        match source {
            AuthoritySource::Ready(authority) => Ok(authority.clone()),
            AuthoritySource::Key { name, key } => {
                let unavailable = |error| Reason::KeyUnavailable { authority: name.clone(), error };
                let keys = self.keys.key_set(std::slice::from_ref(key)).map_err(unavailable)?;
                Ok(Arc::new(Authority::keys(name.clone(), keys)))
            }
        }
    }

    /// What `image` names now: a tag is asked at every review (reviews of the same tag at the same moment share
    /// one request); what a digest names is read once and cached, since it cannot change.
    /// The manifest itself is read only when `platforms` are needed (an attestation may name a platform, or a
    /// policy requires every platform): a signature binds the digest, whatever it names.
    async fn resolve(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        platforms: bool,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<Resolved>, Reason> {
        let identity = creds.fingerprint();
        let head = {
            let registry = self.registry.clone();
            let (owned, creds, bytes) = (image.clone(), creds.clone(), bytes.clone());
            let ask = async move { registry.head(&owned, &creds, &bytes, deadline).await };
            self.tags.run((image.to_string(), identity.clone()), deadline, || ask).await
        }
        .map_err(|e| registry_reason(image, &e))?;
        if !platforms || !head.needs_manifest() {
            let media_type = head.media_type.unwrap_or_default();
            return Ok(Arc::new(Resolved { digest: head.digest, media_type, platforms: Vec::new() }));
        }
        let key = (format!("{}@{}", image.name(), head.digest), identity);
        let fetch = async { self.registry.manifest(image, &head.digest, creds, bytes, deadline).await.map(Arc::new) };
        self.metrics.cached("manifests", &self.manifests, key, fetch).await.map_err(|e| registry_reason(image, &e))
    }

    async fn artifacts_of(
        &self,
        image: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        wanted: Wanted,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<Artifacts>, Reason> {
        let key = (image.name(), digest.clone(), creds.fingerprint(), wanted);
        // Everything fetched serves a caller that needs less.
        if !wanted.attestations
            && let Some(all) = self.artifacts.get(&(key.0.clone(), key.1.clone(), key.2.clone(), Wanted::ALL)).await
        {
            return Ok(all);
        }
        let fetch =
            async { self.registry.artifacts(image, digest, creds, wanted, bytes, deadline).await.map(Arc::new) };
        self.metrics.cached("artifacts", &self.artifacts, key, fetch).await.map_err(|e| registry_reason(image, &e))
    }

    /// What `authority` verifies of `digest`'s artifacts: computed once per (digest, authority, credentials, what
    /// was fetched) on a blocking thread, and cached.
    async fn verification(
        &self,
        image: &ImageRef,
        digest: &Digest,
        platforms: &[Digest],
        fetched: Fetched<'_>,
        creds: &Credentials,
        authority: &Authority,
    ) -> Result<Arc<Verification>, Reason> {
        let key = (image.name(), digest.clone(), creds.fingerprint(), authority.cache_key(), fetched.wanted);
        let (artifacts, digest, platforms, authority) =
            (fetched.artifacts.clone(), digest.clone(), platforms.to_vec(), authority.clone());
        let metrics = self.metrics.clone();
        // Spawned only when awaited, that is on a miss.
        let compute = async move {
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let verification = Verification::of(&artifacts, &digest, &platforms, &authority);
                metrics.verifications.inc();
                metrics.verification_seconds.observe(started.elapsed().as_secs_f64());
                Arc::new(verification)
            })
            .await
        };
        self.metrics.cached("verifications", &self.verifications, key, compute).await.map_err(|e| {
            tracing::error!(error = %e, "a verification failed");
            Reason::InternalError
        })
    }

    /// Every authority's verification of `digest`.
    async fn verify_all(
        &self,
        image: &ImageRef,
        digest: &Digest,
        platforms: &[Digest],
        fetched: Fetched<'_>,
        creds: &Credentials,
        authorities: &[Authority],
    ) -> Result<Verifications, Reason> {
        let checks = authorities.iter().map(|a| async move {
            let v = self.verification(image, digest, platforms, fetched, creds, a).await?;
            Ok::<_, Reason>((a.cache_key(), v))
        });
        futures::future::try_join_all(checks).await.map(|v| v.into_iter().collect())
    }

    /// Resolves `image`, fetches its artifacts and verifies them under each of `authorities`. When some of them
    /// (`every_platform`, by cache key) govern a policy that requires every platform, and the index verified under
    /// one of those, the platform manifests are fetched and verified too, at most `maxPlatforms` of them.
    async fn image(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        authorized: &Authorized<'_>,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<ImageEvidence, Reason> {
        let (authorities, every_platform, wanted) = (authorized.all, authorized.every_platform, authorized.wanted);
        let _permit = self.fetching.acquire().await.map_err(|_| shutting_down())?;
        let _in_flight = InFlight::enter(&self.metrics.fetches_in_flight);
        let platforms_needed = wanted.attestations || !every_platform.is_empty();
        let resolved = self.resolve(image, creds, platforms_needed, bytes, deadline).await?;
        let digest = resolved.digest.clone();
        let platforms = platforms_of(&resolved);
        let artifacts = self.artifacts_of(image, &digest, creds, wanted, bytes, deadline).await?;
        let fetched = Fetched { artifacts: &artifacts, wanted };
        let verified = self.verify_all(image, &digest, &platforms, fetched, creds, authorities).await?;
        let index_vouched =
            every_platform.iter().any(|key| verified.get(key).is_some_and(|v| !v.signatures.verified.is_empty()));
        let mut platforms_verified = None;
        if index_vouched && !platforms.is_empty() {
            if platforms.len() > self.config.max_platforms {
                let (count, max) = (platforms.len(), self.config.max_platforms);
                return Err(Reason::TooManyPlatforms { image: image.to_string(), count, max });
            }
            let fetches = platforms.iter().cloned().map(|d| async move {
                // A platform needs only its signature.
                let found = self.artifacts_of(image, &d, creds, NO_ATT, bytes, deadline).await?;
                let fetched = Fetched { artifacts: &found, wanted: NO_ATT };
                let checks = self.verify_all(image, &d, &[], fetched, creds, authorities).await?;
                Ok::<_, Reason>((d, checks))
            });
            platforms_verified = Some(futures::stream::iter(fetches).buffered(PLATFORMS_AT_ONCE).try_collect().await?);
        }
        Ok(ImageEvidence { digest, platforms, verified, platforms_verified })
    }
}

/// Platform manifests of an index, without BuildKit's attestation manifests (platform `unknown/unknown`).
fn platforms_of(resolved: &Resolved) -> Vec<Digest> {
    resolved
        .platforms
        .iter()
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(|p| p.digest.clone())
        .collect()
}

/// Labels of `provgate_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// What the gatherer counts; `metrics` registers these on the metrics endpoint.
#[derive(Clone)]
pub struct GatherMetrics {
    /// Verifications computed: one per (digest, authority, credentials, fetch) not found in the cache.
    pub verifications: Counter,
    /// Cache lookups by cache (`manifests`, `artifacts`, `verifications`) and result.
    pub cache: Family<CacheLabels, Counter>,
    /// Seconds to compute one verification (signature checks of one digest under one authority).
    pub verification_seconds: Histogram,
    /// Images being fetched now (each holding one of `cache.maxConcurrentFetches` slots).
    pub fetches_in_flight: Gauge,
    /// Seconds from the start of a review's gathering to one image's evidence (or failure), per image gathered.
    pub image_seconds: Histogram,
}

/// One unit of a gauge, held until dropped (a fetch cut short by the deadline is dropped, never finished).
struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for GatherMetrics {
    fn default() -> Self {
        let buckets = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];
        Self {
            verifications: Counter::default(),
            cache: Family::default(),
            verification_seconds: Histogram::new(buckets),
            fetches_in_flight: Gauge::default(),
            image_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        }
    }
}

impl GatherMetrics {
    /// The cached answer for `key`, or `make`'s (one in flight per key), counted as a hit or a miss of `cache`.
    /// `make` runs only on a miss.
    async fn cached<K, V, E, F>(
        &self,
        cache: &'static str,
        store: &moka::future::Cache<K, V>,
        key: K,
        make: F,
    ) -> Result<V, Arc<E>>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<V, E>>,
    {
        let missed = AtomicBool::new(false);
        let answer = store
            .try_get_with(key, async {
                missed.store(true, Ordering::Relaxed);
                make.await
            })
            .await;
        let result = if missed.load(Ordering::Relaxed) { "miss" } else { "hit" };
        self.cache.get_or_create(&CacheLabels { cache, result }).inc();
        answer
    }
}

/// Artifacts without the `.att` tag.
const NO_ATT: Wanted = Wanted { attestations: false };

/// Artifacts as fetched, and what was asked for (part of every cache key that depends on them).
#[derive(Clone, Copy)]
struct Fetched<'a> {
    artifacts: &'a Arc<Artifacts>,
    wanted: Wanted,
}

/// Who judges one image, and what that needs fetched.
struct Authorized<'a> {
    /// Every authority of the governing policies.
    all: &'a [Authority],
    /// Cache keys of the authorities of policies that require every platform.
    every_platform: &'a [String],
    wanted: Wanted,
}

fn shutting_down() -> Reason {
    Reason::ShuttingDown
}

fn registry_reason(image: &ImageRef, error: &RegistryError) -> Reason {
    Reason::Registry { image: image.to_string(), error: error.clone() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Gathering against the in-memory registry: what is asked, how often, and what is cached.

    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::images::{PodKind, extract};
    use crate::policy::{PolicySet, load_sources};
    use crate::registry::memory::{Call, MemoryRegistry};
    use crate::verify::fixtures::{Key, artifacts, digest};

    const APP: &str = "registry.example.com/team/app";
    const OTHER: &str = "registry.example.com/team/other";

    /// One policy per `(name, authorities, require)`, each authority's key inline, matching every image of
    /// registry.example.com.
    /// (policy name, its authorities with their keys, its `require`).
    type Spec<'a> = (&'a str, &'a [(&'a str, &'a Key)], &'a str);

    fn policies(specs: &[Spec]) -> PolicySet {
        let docs: Vec<String> = specs
            .iter()
            .map(|(name, authorities, require)| {
                let mut doc = format!(
                    "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  \
                     match: {{images: [\"registry.example.com/**\"]}}\n  require: {require}\n  authorities:\n"
                );
                for (authority, key) in *authorities {
                    doc.push_str(&format!("    - name: {authority}\n      key: |\n"));
                    for line in key.pem().lines() {
                        doc.push_str(&format!("        {line}\n"));
                    }
                }
                doc
            })
            .collect();
        load_sources(&[(PathBuf::from("p.yaml"), docs.join("---\n"))]).unwrap()
    }

    fn plan_of(set: &PolicySet, images: &[&str]) -> Plan {
        let containers: Vec<_> = images.iter().map(|i| json!({"name": "c", "image": i})).collect();
        let fields = extract(PodKind::Pod, &json!({"spec": {"containers": containers}})).unwrap();
        crate::plan::plan(fields, &[], set, "team-a")
    }

    fn gatherer(registry: &Arc<MemoryRegistry>, cache: CacheConfig) -> Gatherer {
        Gatherer::new(registry.clone(), KeyStore::default(), cache)
    }

    async fn gather(g: &Gatherer, plan: &Plan) -> Gathered {
        let budget = Duration::from_secs(10);
        g.gather(plan, &HostCredentials::default(), Instant::now() + budget, budget).await
    }

    fn found<'a>(gathered: &'a Gathered, image: &str) -> &'a Result<Arc<ImageEvidence>, Reason> {
        gathered.images.get(&ImageRef::parse(image).unwrap()).unwrap()
    }

    /// A single-platform image `tag` of `repository`, signed by `key`.
    fn signed_image(r: &MemoryRegistry, repository: &str, tag: &str, label: &str, key: &Key) -> Digest {
        let d = digest(label);
        r.put_manifest(repository, &d, crate::registry::memory::MANIFEST);
        r.tag(repository, tag, &d);
        r.put_artifacts(repository, &d, artifacts(vec![key.signature(&d)], vec![]));
        d
    }

    #[tokio::test]
    async fn a_tag_is_asked_at_every_gather_and_may_point_elsewhere_the_next_time() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let first = signed_image(&r, APP, "1", "first", &key);
        let set = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        let plan = plan_of(&set, &[&format!("{APP}:1")]);
        let g = gatherer(&r, CacheConfig::default());
        assert_eq!(found(&gather(&g, &plan).await, &format!("{APP}:1")).as_ref().unwrap().digest, first);
        assert_eq!(found(&gather(&g, &plan).await, &format!("{APP}:1")).as_ref().unwrap().digest, first);
        assert_eq!(r.calls(Call::Head), 2, "a tag is asked at every review");
        assert_eq!(r.calls(Call::Manifest), 0, "the HEAD answer named a single manifest");
        assert_eq!(r.calls_for(Call::Artifacts, &first), 1, "what a digest holds is cached");
        let moved = signed_image(&r, APP, "1", "moved", &key);
        let again = gather(&g, &plan).await;
        assert_eq!(found(&again, &format!("{APP}:1")).as_ref().unwrap().digest, moved);
        assert_eq!((r.calls(Call::Head), r.calls_for(Call::Artifacts, &moved)), (3, 1));
    }

    #[tokio::test]
    async fn a_digest_manifest_is_read_once_and_only_when_platforms_matter() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let d = signed_image(&r, APP, "1", "image", &key);
        let pinned = format!("{APP}@{d}");
        // An attestation may name a platform of an index, so the manifest is read: once, since it cannot change.
        let attested = policies(&[("p", &[("a", &key)], "{attestations: [{name: p, predicateType: slsa}]}")]);
        let g = gatherer(&r, CacheConfig::default());
        for _ in 0..3 {
            let gathered = gather(&g, &plan_of(&attested, &[&pinned])).await;
            assert_eq!(found(&gathered, &pinned).as_ref().unwrap().digest, d);
        }
        assert_eq!(r.calls_for(Call::Manifest, &d), 1, "a manifest by digest cannot change: read once");
        assert_eq!(r.calls_for(Call::Artifacts, &d), 1);
        // A signature binds the digest whatever it names: no manifest is read at all.
        let r = Arc::new(MemoryRegistry::new());
        let d = signed_image(&r, APP, "1", "image", &key);
        let signed = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        let gathered = gather(&gatherer(&r, CacheConfig::default()), &plan_of(&signed, &[&pinned])).await;
        assert_eq!(found(&gathered, &pinned).as_ref().unwrap().digest, d);
        assert_eq!(r.calls_for(Call::Manifest, &d), 0);
    }

    #[tokio::test]
    async fn an_image_written_in_three_fields_is_gathered_once() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let d = signed_image(&r, APP, "1", "image", &key);
        let set = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        let image = format!("{APP}:1");
        let plan = plan_of(&set, &[&image, &image, &image]);
        assert_eq!(plan.images.len(), 3);
        let g = gatherer(&r, CacheConfig::default());
        let gathered = gather(&g, &plan).await;
        assert_eq!(gathered.images.len(), 1);
        assert_eq!(found(&gathered, &image).as_ref().unwrap().digest, d);
        assert_eq!((r.calls(Call::Head), r.calls(Call::Artifacts), g.metrics.verifications.get()), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_verification_is_computed_once_per_digest_and_authority_across_gathers() {
        let (ka, kb) = (Key::new(), Key::new());
        let r = Arc::new(MemoryRegistry::new());
        let d = signed_image(&r, APP, "1", "image", &ka);
        // Two policies share authority `a` (same name, same key): one verification serves both.
        let set = policies(&[
            ("p", &[("a", &ka), ("b", &kb)], "{signature: true}"),
            ("q", &[("a", &ka)], "{signature: true}"),
        ]);
        let plan = plan_of(&set, &[&format!("{APP}:1"), &format!("{APP}@{d}")]);
        let g = gatherer(&r, CacheConfig::default());
        for _ in 0..2 {
            let gathered = gather(&g, &plan).await;
            let evidence = found(&gathered, &format!("{APP}:1")).as_ref().unwrap();
            assert_eq!(evidence.verified.len(), 2, "one verification per authority");
            let a = &evidence.verified[&ka.authority("a").cache_key()];
            let b = &evidence.verified[&kb.authority("b").cache_key()];
            assert_eq!((a.signatures.verified.len(), b.signatures.verified.len()), (1, 0));
        }
        // Two references of one digest under one identity share the cache, for each of the two authorities.
        assert_eq!(g.metrics.verifications.get(), 2);
    }

    #[tokio::test]
    async fn platforms_are_fetched_only_for_a_verified_index_and_never_more_than_max_platforms() {
        let (key, stranger) = (Key::new(), Key::new());
        let (index, amd, arm, s390) = (digest("index"), digest("amd64"), digest("arm64"), digest("s390x"));
        let attestation_manifest = digest("buildkit-attestation");
        let all = "{signature: true, platforms: all}";
        // (what, index signed by, policy require, maxPlatforms, platforms listed, want platforms fetched or a reason)
        type Row<'a> = (&'a str, Option<&'a Key>, &'a str, usize, Vec<&'a Digest>, Result<usize, &'a str>);
        let table: Vec<Row> = vec![
            ("verified index", Some(&key), all, 32, vec![&amd, &arm], Ok(2)),
            ("unsigned index", None, all, 32, vec![&amd, &arm], Ok(0)),
            ("index signed by a stranger", Some(&stranger), all, 32, vec![&amd, &arm], Ok(0)),
            ("platforms: index", Some(&key), "{signature: true}", 32, vec![&amd, &arm], Ok(0)),
            ("at the cap", Some(&key), all, 2, vec![&amd, &arm], Ok(2)),
            ("over the cap", Some(&key), all, 2, vec![&amd, &arm, &s390], Err("too-many-platforms")),
        ];
        for (what, signer, require, max_platforms, listed, want) in table {
            let r = Arc::new(MemoryRegistry::new());
            let mut entries: Vec<(Digest, &str, &str)> =
                listed.iter().map(|d| ((*d).clone(), "linux", "amd64")).collect();
            entries.push((attestation_manifest.clone(), "unknown", "unknown"));
            r.put_index(APP, &index, &entries);
            r.tag(APP, "1", &index);
            let signatures = signer.map(|k| vec![k.signature(&index)]).unwrap_or_default();
            r.put_artifacts(APP, &index, artifacts(signatures, vec![]));
            for d in &listed {
                r.put_artifacts(APP, d, artifacts(vec![key.signature(d)], vec![]));
            }
            let set = policies(&[("p", &[("a", &key)], require)]);
            let g = gatherer(&r, CacheConfig { max_platforms, ..CacheConfig::default() });
            let gathered = gather(&g, &plan_of(&set, &[&format!("{APP}:1")])).await;
            let fetched = listed.iter().map(|d| r.calls_for(Call::Artifacts, d)).sum::<usize>();
            assert_eq!(r.calls_for(Call::Artifacts, &attestation_manifest), 0, "{what}: BuildKit manifests skipped");
            match (found(&gathered, &format!("{APP}:1")), want) {
                (Ok(evidence), Ok(n)) => {
                    assert_eq!(fetched, n, "{what}");
                    // Platforms are listed only where they matter (`platforms: all` here).
                    let listing = if require == all { listed.len() } else { 0 };
                    assert_eq!(evidence.platforms.len(), listing, "{what}");
                    let checked = evidence.platforms_verified.as_ref().map(Vec::len);
                    assert_eq!(checked, (n > 0).then_some(n), "{what}");
                    for (_, verified) in evidence.platforms_verified.iter().flatten() {
                        assert_eq!(verified.values().map(|v| v.signatures.verified.len()).sum::<usize>(), 1);
                    }
                }
                (Err(reason), Err(code)) => {
                    assert_eq!(reason.code(), code, "{what}: {reason}");
                    assert_eq!(fetched, 0, "{what}: nothing fetched past the cap");
                }
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_registry_error_becomes_a_reason_for_its_image_while_others_gather() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let app = signed_image(&r, APP, "1", "app", &key);
        let other = signed_image(&r, OTHER, "1", "other", &key);
        let refused = RegistryError::Unauthorized {
            registry: "registry.example.com".into(),
            repository: "team/app".into(),
            detail: "401 Unauthorized".into(),
        };
        let set = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        let plan = plan_of(&set, &[&format!("{APP}:1"), &format!("{OTHER}:1")]);
        let g = gatherer(&r, CacheConfig::default());
        for call in [Call::Head, Call::Artifacts] {
            r.fail(call, Some(APP), refused.clone());
            let gathered = gather(&g, &plan).await;
            match found(&gathered, &format!("{APP}:1")) {
                Err(reason @ Reason::Registry { error, .. }) => {
                    assert_eq!((reason.code(), error), ("registry-unauthorized", &refused));
                }
                got => panic!("{call:?}: {got:?}"),
            }
            assert_eq!(found(&gathered, &format!("{OTHER}:1")).as_ref().unwrap().digest, other, "{call:?}");
            r.heal();
        }
        // The failure was not cached: the next review gathers the image.
        let gathered = gather(&g, &plan).await;
        assert_eq!(found(&gathered, &format!("{APP}:1")).as_ref().unwrap().digest, app);
    }

    #[tokio::test]
    async fn a_key_that_cannot_be_loaded_is_a_reason_for_its_authority_and_others_still_verify() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        signed_image(&r, APP, "1", "app", &key);
        let text = format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: p}}\nspec:\n  match: {{images: \
             [\"registry.example.com/**\"]}}\n  authorities:\n    - {{name: secret, key: \"k8s://keys/cosign\"}}\n    \
             - name: a\n      key: |\n{}",
            key.pem().lines().map(|l| format!("        {l}\n")).collect::<String>()
        );
        let set = load_sources(&[(PathBuf::from("p.yaml"), text)]).unwrap();
        let g = gatherer(&r, CacheConfig::default());
        let gathered = gather(&g, &plan_of(&set, &[&format!("{APP}:1")])).await;
        let secret = gathered.authorities[&("p".to_owned(), "secret".to_owned())].as_ref().unwrap_err();
        assert_eq!(secret.code(), "key-no-client");
        assert!(gathered.authorities[&("p".to_owned(), "a".to_owned())].is_ok());
        let evidence = found(&gathered, &format!("{APP}:1")).as_ref().unwrap();
        assert_eq!(evidence.verified.len(), 1, "only the authority with a key is verified");
    }
}
