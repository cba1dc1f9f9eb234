//! Gathers what the policies need for each image, concurrently under one deadline, and verifies it: the digest a
//! tag names now, the signature and attestation layers stored beside it (or in a policy's signature repository), and
//! what each authority's keys or identities verify of them, once per (repository, digest, authority) and cached; an
//! absence is cached only briefly (`cache.missingTtl`). All I/O of a review, and every signature
//! check, happens here; `decide` judges only [`Verification`]s, which hold nothing but `Verified` items and the
//! reasons layers were rejected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use futures::{StreamExt as _, TryStreamExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::artifact::{Artifacts, Storage};
use crate::credentials::PullSecrets;
use crate::flights::Flights;
use crate::images::{Digest, ImageRef};
use crate::keys::KeyStore;
use crate::plan::{Plan, Step};
use crate::policy::Policy;
use crate::policy::require::Platforms;
use crate::policy::signatures::SignatureRepository;
use crate::policy::trust::AuthoritySource;
use crate::reason::Reason;
use crate::registry::{Budget, Credentials, Head, HostCredentials, Registry, RegistryError, Resolved, Wanted};
use crate::verify::{self, AttestationCheck, Authority, SignatureCheck, Trust};

mod coverage;
mod memo;
pub use coverage::{Coverage, LayerEvidence, ListEvidence};

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

/// Verifications of one digest, by [`evidence_key`] (the authority, and the signature repository it was read from).
pub type Verifications = HashMap<Arc<str>, Arc<Verification>, Hasher>;

/// The key of what `authority` verified of signatures read from `signatures` (a policy's `spec.signatures`; `None`:
/// the image's own repository). Two policies sharing an authority but not a signature repository never share a
/// verification.
pub fn evidence_key(signatures: Option<&SignatureRepository>, authority: &Authority) -> Arc<str> {
    match signatures {
        None => authority.cache_key(),
        Some(repository) => format!("{} in {}", authority.cache_key(), repository.key()).into(),
    }
}

/// Where one signature source was read, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `registry/repository` the `.sig`, `.att` and referrers were read from.
    pub repository: String,
    /// Which of those places were read (the union of what the policies reading it name).
    pub storage: Storage,
    /// Nothing (or no attestation, where one was wanted) was found there: that absence is reused only this long
    /// (`cache.missingTtl`), since the signer may not have published yet.
    pub missing: Option<Duration>,
}

impl ImageEvidence {
    /// Why nothing may have been found for a policy reading `signatures`, and when provgate looks again; `None`
    /// when something was found there.
    pub fn absence(&self, signatures: Option<&SignatureRepository>) -> Option<String> {
        let lookup = self.lookups.get(source_key(signatures))?;
        let ttl = lookup.missing?;
        let only = lookup.storage.only().map_or(String::new(), |(read, left_out)| {
            format!(" (only its {read}: signatures.storage names no {left_out})")
        });
        Some(format!(
            "looked in {}{only}; the signature may not be published yet (Tekton Chains signs after the TaskRun ends): \
             provgate looks again within {}",
            lookup.repository,
            humantime::format_duration(ttl)
        ))
    }
}

/// The key of a signature source among an image's [`Lookup`]s.
fn source_key(signatures: Option<&SignatureRepository>) -> &str {
    signatures.map_or("", SignatureRepository::key)
}

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
    /// Where each signature source of the governing policies was read, by source.
    pub lookups: HashMap<String, Lookup>,
    /// What each governing policy's `spec.evidence` fetched, by policy name (see [`EvidenceFetch`]).
    pub evidence: crate::evidence::document::ByPolicy,
    /// What else may cover the image: the release lists its policies name, an image volume's layers.
    pub coverage: Coverage,
    /// What policies made of this evidence (empty when gathered, and in a clone).
    pub judged: crate::judged::Judged,
}

/// Fetches the evidence that policies' `spec.evidence` select from an image's verified statements, once its
/// verifications are gathered (the app wires [`crate::evidence::fetch::Fetcher`]). Without one, a policy that
/// declares evidence finds it not gathered, a denial.
#[async_trait::async_trait]
pub trait EvidenceFetch: Send + Sync {
    /// The evidence of each policy in `policies` (those that declare some) for `image`, whose verified evidence
    /// is `found`; within `bytes` and `deadline`, with the review's pull `credentials`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        image: &ImageRef,
        found: &ImageEvidence,
        policies: &[&Arc<Policy>],
        authorities: &Authorities,
        credentials: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> crate::evidence::document::ByPolicy;
}

/// What the registry holds for one image, for reports (`provgate verify`).
#[derive(Debug, Clone)]
pub struct Inspected {
    pub digest: Digest,
    pub platforms: Vec<Digest>,
    pub artifacts: Arc<Artifacts>,
}

/// Authorities resolved for one review, by policy name and authority name (looked up for every image judged, so
/// by borrowed names).
#[derive(Debug, Default)]
pub struct Authorities(HashMap<String, HashMap<String, Resolution, Hasher>, Hasher>);

type Hasher = foldhash::fast::RandomState;

/// An authority with its keys or identities, or why it has none.
pub type Resolution = Result<Arc<Authority>, Reason>;

impl Authorities {
    pub fn new() -> Self {
        Self::default()
    }

    /// What `policy`'s authority `authority` resolved to, if it was resolved for this review.
    pub fn get(&self, policy: &str, authority: &str) -> Option<&Resolution> {
        self.0.get(policy)?.get(authority)
    }

    /// What each authority of `policy` resolved to for this review, in the policy's order, by name (`None`: not
    /// resolved for this review).
    pub fn of<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = (&'a str, Option<&'a Resolution>)> + 'a {
        let resolved = self.0.get(policy.name.as_str());
        policy.authorities.iter().map(move |source| (source.name(), resolved.and_then(|r| r.get(source.name()))))
    }

    /// Records what `policy`'s authority `authority` resolved to.
    pub fn insert(&mut self, policy: &str, authority: &str, resolution: Resolution) {
        self.0.entry(policy.to_owned()).or_default().insert(authority.to_owned(), resolution);
    }

    /// Resolves `policy`'s authority `authority` with `resolve`, unless it was already.
    fn get_or_insert_with(&mut self, policy: &str, authority: &str, resolve: impl FnOnce() -> Resolution) {
        if self.get(policy, authority).is_none() {
            self.insert(policy, authority, resolve());
        }
    }
}

impl FromIterator<((String, String), Resolution)> for Authorities {
    fn from_iter<I: IntoIterator<Item = ((String, String), Resolution)>>(iter: I) -> Self {
        let mut authorities = Self::new();
        for ((policy, authority), resolution) in iter {
            authorities.insert(&policy, &authority, resolution);
        }
        authorities
    }
}

/// Everything gathered for one plan: evidence per image reference (an image written in several fields is gathered
/// once), and the authorities of the governing policies.
#[derive(Debug, Default)]
pub struct Gathered {
    pub images: HashMap<ImageRef, Result<Arc<ImageEvidence>, Reason>, Hasher>,
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
    /// How long "nothing found" for a digest is reused (no signature, or no attestation where one is required): a
    /// signer such as Tekton Chains publishes after the build ends, so a deploy may race it.
    #[serde(with = "humantime_serde")]
    pub missing_ttl: Duration,
    /// Images fetched at once across all reviews; more wait their turn (within their deadline).
    pub max_concurrent_fetches: usize,
    /// Images of one review fetched at once, so one review cannot take every fetch slot.
    pub max_review_fetches: usize,
    /// Most platform manifests fetched for one image under `platforms: all`; an index with more is denied.
    pub max_platforms: usize,
    /// Largest release list read (`require.attestations[].via.list`): its manifest, and its JSON blob.
    pub max_list_bytes: u64,
    /// Most entries a release list may hold (an index's manifests, a JSON list's references).
    pub max_list_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_artifact_bytes: 32 << 20,
            artifacts_ttl: Duration::from_secs(300),
            missing_ttl: Duration::from_secs(5),
            max_concurrent_fetches: 64,
            max_review_fetches: 16,
            max_platforms: 32,
            max_list_bytes: 1 << 20,
            max_list_entries: 10_000,
        }
    }
}

/// Platform manifests of one image fetched at once.
const PLATFORMS_AT_ONCE: usize = 4;

/// A key verification of at most this many layers, of at most [`IN_PLACE_BYTES`] in all, runs on the async worker;
/// anything more (or keyless) on a blocking thread, so that a registry serving large statements cannot hold a worker.
const IN_PLACE_LAYERS: usize = 2;

/// See [`IN_PLACE_LAYERS`]: a signature payload is a few hundred bytes, a typical statement a few KiB.
const IN_PLACE_BYTES: u64 = 64 * 1024;

pub struct Gatherer {
    registry: Arc<dyn Registry>,
    keys: KeyStore,
    config: CacheConfig,
    /// (reference with digest, credentials identity) -> what it names. Content-addressed, so it cannot go stale.
    manifests: moka::future::Cache<(String, String), Arc<Resolved>>,
    /// Tags in flight: a tag is resolved at every review (it may point elsewhere now), concurrent reviews of the
    /// same tag sharing one request.
    tags: Flights<(String, String), Result<Head, RegistryError>>,
    /// (repository the artifacts are read from, digest, credentials identity, what was asked) -> its artifacts,
    /// numbered by fetch. Kept `artifactsTtl`, or `missingTtl` when nothing was found.
    artifacts: moka::future::Cache<ArtifactsKey, Found>,
    /// Numbers each fetch of artifacts.
    fetches: AtomicU64,
    /// (repository, digest, credentials identity, authority cache key, what was asked, fetch number) -> what that
    /// authority verified of exactly those artifacts.
    verifications: moka::future::Cache<VerificationKey, Arc<Verification>>,
    /// Bounds the images being fetched at once, so a burst of reviews cannot open unbounded connections.
    fetching: tokio::sync::Semaphore,
    /// Verifications computed, cache lookups, verification time.
    metrics: GatherMetrics,
    /// Reads policies' `signaturePullSecrets`.
    pull_secrets: Option<Arc<PullSecrets>>,
    /// Fetches policies' `spec.evidence`.
    evidence: Option<Arc<dyn EvidenceFetch>>,
    /// Release lists and layers, by digest.
    coverage: coverage::Store,
    /// Each image's evidence as last put together from the caches above (see [`memo`]).
    memo: memo::Memo,
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
            .weigher(move |_, found: &Found| weight(found.1.bytes()))
            .expire_after(Freshness)
            .build();
        let verifications = moka::future::Cache::builder()
            .max_capacity(cache.max_artifact_bytes)
            .weigher(move |_, v: &Arc<Verification>| weight(v.bytes))
            .time_to_live(cache.artifacts_ttl)
            .build();
        let fetching = tokio::sync::Semaphore::new(cache.max_concurrent_fetches.max(1));
        let tags = Flights::default();
        let metrics = GatherMetrics::default();
        let fetches = AtomicU64::new(0);
        let coverage = coverage::Store::new(&cache);
        let memo = memo::Memo::new(cache.max_entries / 4, cache.max_artifact_bytes);
        Self {
            registry,
            keys,
            config: cache,
            manifests,
            tags,
            artifacts,
            fetches,
            verifications,
            fetching,
            metrics,
            pull_secrets: None,
            evidence: None,
            coverage,
            memo,
        }
    }

    /// Forgets every artifact fetched and the evidence put together from them, as if their time to live had passed.
    #[cfg(test)]
    fn forget_artifacts(&self) {
        self.artifacts.invalidate_all();
        self.memo.clear();
    }

    /// Fetches policies' `spec.evidence` through `fetcher`.
    pub fn with_evidence(mut self, fetcher: Arc<dyn EvidenceFetch>) -> Self {
        self.evidence = Some(fetcher);
        self
    }

    /// Counts into `metrics` (registered on the metrics endpoint by [`crate::metrics::Metrics::new`]).
    pub fn with_metrics(mut self, metrics: GatherMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reads the `signaturePullSecrets` of policies through `secrets` (without it, those policies' signature
    /// repositories are read with the config's credentials for their host).
    pub fn with_pull_secrets(mut self, secrets: Arc<PullSecrets>) -> Self {
        self.pull_secrets = Some(secrets);
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
                        authorities.get_or_insert_with(&policy.name, source.name(), || self.authority(source));
                    }
                }
            }
        }
        let mounted: std::collections::HashSet<&ImageRef> = plan
            .images
            .iter()
            .filter(|p| p.field.usage() == crate::images::Use::Mount)
            .filter_map(|p| p.field.image.as_ref().ok())
            .collect();
        let review = tokio::sync::Semaphore::new(self.config.max_review_fetches.max(1));
        let started = Instant::now();
        let bytes = self.registry.budget();
        let mut images = HashMap::default();
        let mut jobs = Vec::new();
        // Images governed by the same policies read the same sources (most Pods: every image, one policy): they
        // are listed once per list of policies.
        let mut listed: Vec<Listed> = Vec::new();
        for (image, needing) in plan.to_gather() {
            let same = |(policies, _): &&Listed| {
                policies.len() == needing.len() && policies.iter().zip(&needing).all(|(a, b)| Arc::ptr_eq(a, b))
            };
            let sources = match listed.iter().find(same) {
                Some((_, sources)) => sources.clone(),
                None => {
                    let sources = Arc::new(sources(&needing, &authorities));
                    listed.push((needing.clone(), sources.clone()));
                    sources
                }
            };
            let usage = if mounted.contains(image) { crate::images::Use::Mount } else { crate::images::Use::Run };
            // Evidence that is whole as remembered is the answer at once: no fetch slot, no deadline, no future.
            let complete = !coverage::wanted(&needing, usage) && needing.iter().all(|p| p.evidence.is_empty());
            if complete && let Some(evidence) = self.remembered(image, credentials, &sources) {
                self.metrics.image_seconds.observe(started.elapsed().as_secs_f64());
                images.insert(image.clone(), Ok(evidence));
                continue;
            }
            let (review, bytes, authorities) = (&review, &bytes, &authorities);
            jobs.push(async move {
                let work = async {
                    let _slot = review.acquire().await.map_err(|_| shutting_down())?;
                    let evidence = self.image(image, credentials, &sources, bytes, deadline).await?;
                    let declaring: Vec<&Arc<Policy>> =
                        needing.iter().copied().filter(|p| !p.evidence.is_empty()).collect();
                    if !coverage::wanted(&needing, usage) && declaring.is_empty() {
                        return Ok(evidence);
                    }
                    let evidence = Arc::unwrap_or_clone(evidence);
                    let mut found = Box::pin(self.cover(
                        evidence,
                        image,
                        &needing,
                        usage,
                        credentials,
                        authorities,
                        bytes,
                        deadline,
                    ))
                    .await;
                    if let (Some(fetcher), false) = (&self.evidence, declaring.is_empty()) {
                        found.evidence =
                            fetcher.fetch(image, &found, &declaring, authorities, credentials, bytes, deadline).await;
                    }
                    Ok(Arc::new(found))
                };
                let result = match tokio::time::timeout_at(deadline, work).await {
                    Ok(result) => result,
                    Err(_) => Err(Reason::DeadlineExceeded(budget)),
                };
                self.metrics.image_seconds.observe(started.elapsed().as_secs_f64());
                (image.clone(), result)
            });
        }
        images.extend(join_all(jobs).await);
        Gathered { images, authorities, bytes: Some(bytes) }
    }

    /// The evidence of `image` when its digest is written, no platform is needed, and what it was put together from
    /// is remembered ([`memo`]) and still current: what [`Gatherer::image`] would answer, without asking.
    fn remembered(
        &self,
        image: &ImageRef,
        review: &HostCredentials,
        sources: &[Source<'_>],
    ) -> Option<Arc<ImageEvidence>> {
        let digest = image.digest().filter(|_| !platforms_needed(sources))?;
        let found =
            self.memo.get(&memo::Lookup::new(image, digest, false, review, sources)?, std::time::Instant::now())?;
        self.metrics.images_memo[1].inc();
        Some(found)
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
            Some((_, found, _)) => found,
            None => self.artifacts_of(image, &resolved.digest, &creds, Wanted::ALL, &bytes, deadline).await?.1,
        };
        Ok(Inspected { digest: resolved.digest.clone(), platforms: platforms_of(&resolved), artifacts })
    }

    fn authority(&self, source: &AuthoritySource) -> Result<Arc<Authority>, Reason> {
        source
            .resolve(&self.keys)
            .map_err(|error| Reason::KeyUnavailable { authority: source.name().to_owned(), error })
    }

    /// What `image` names now: a tag is asked at every review (reviews of the same tag at the same moment share
    /// one request); what a digest names is read once and cached, since it cannot change.
    /// The manifest itself is read only when `platforms` are needed (an attestation may name a platform, or a
    /// policy requires every platform): a signature binds the digest, whatever it names.
    /// A digest that no platform is needed of is its own answer; anything else asks the registry, boxed, so that a
    /// warm review's futures stay small (each image's is moved on its way to the join, and the registry's state
    /// machines are kilobytes).
    async fn resolve(
        &self,
        image: &ImageRef,
        creds: &Credentials,
        platforms: bool,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<Resolved>, Reason> {
        match resolved_at_once(image, platforms) {
            Some(resolved) => Ok(resolved),
            None => Box::pin(self.resolve_from_registry(image, creds, platforms, bytes, deadline)).await,
        }
    }

    /// [`Gatherer::resolve`] by asking the registry.
    async fn resolve_from_registry(
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

    /// The artifacts stored for `digest` in the repository of `at` (the image's, or a signature repository),
    /// numbered by fetch. Concurrent callers share one fetch; what is found is reused for `artifactsTtl`, an
    /// absence for `missingTtl`.
    async fn artifacts_of(
        &self,
        at: &ImageRef,
        digest: &Digest,
        creds: &Credentials,
        wanted: Wanted,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Found, Reason> {
        let key = (at.name(), digest.clone(), creds.fingerprint(), wanted);
        // Everything fetched serves a caller that needs less, seeing only what it would have read itself.
        if wanted != Wanted::ALL
            && let Some(all) = self.artifacts.get(&(key.0.clone(), key.1.clone(), key.2.clone(), Wanted::ALL)).await
        {
            return Ok(self.narrowed(all, wanted));
        }
        let fetch = async {
            let found = self.registry.artifacts(at, digest, creds, wanted, bytes, deadline).await?;
            let fetch = self.fetches.fetch_add(1, Ordering::Relaxed);
            let ttl = match missing(&found, wanted) {
                true => self.config.missing_ttl.min(self.config.artifacts_ttl),
                false => self.config.artifacts_ttl,
            };
            Ok::<_, RegistryError>((fetch, Arc::new(found), std::time::Instant::now() + ttl))
        };
        self.metrics.cached("artifacts", &self.artifacts, key, fetch).await.map_err(|e| registry_reason(at, &e))
    }

    /// `found` (read from every place) as a read of only what `wanted` names would have found it: the same fetch,
    /// reused no longer than such a read would be.
    fn narrowed(&self, found: Found, wanted: Wanted) -> Found {
        let (fetch, all, until) = found;
        if wanted.storage == Storage::BOTH {
            // Only the `.att` tag is left out, and nothing judged without an attestation requirement reads it.
            return (fetch, all, until);
        }
        let mut artifacts = Artifacts::clone(&all);
        artifacts.retain(|origin| wanted.keeps(origin));
        let until = match missing(&artifacts, wanted) {
            true => until.min(std::time::Instant::now() + self.config.missing_ttl),
            false => until,
        };
        (fetch, Arc::new(artifacts), until)
    }

    /// What `authority` verifies of `digest`'s artifacts: computed once per (repository, digest, authority,
    /// credentials, fetch) on a blocking thread, and cached.
    async fn verification(
        &self,
        at: &ImageRef,
        digest: &Digest,
        platforms: &[Digest],
        fetched: Fetched<'_>,
        creds: &Credentials,
        authority: &Authority,
    ) -> Result<Arc<Verification>, Reason> {
        let (fetch, artifacts, _) = fetched.found;
        let key = (
            at.name(),
            digest.clone(),
            creds.fingerprint(),
            authority.cache_key(),
            fetched.wanted,
            !platforms.is_empty(),
            *fetch,
        );
        let (artifacts, digest, platforms, authority) =
            (artifacts.clone(), digest.clone(), platforms.to_vec(), authority.clone());
        let metrics = self.metrics.clone();
        // Run only when awaited, that is on a miss: in place when it is a key check of a layer or two of small
        // documents (about a tenth of a millisecond, less than the hop to a blocking thread and back), else on a
        // blocking thread.
        let in_place = verifies_in_place(&authority, &artifacts);
        let compute = async move {
            let verify = move || {
                let started = std::time::Instant::now();
                let verification = Verification::of(&artifacts, &digest, &platforms, &authority);
                metrics.verifications.inc();
                metrics.verification_seconds.observe(started.elapsed().as_secs_f64());
                Arc::new(verification)
            };
            if in_place { Ok(verify()) } else { tokio::task::spawn_blocking(verify).await }
        };
        self.metrics.cached("verifications", &self.verifications, key, compute).await.map_err(|e| {
            tracing::error!(error = %e, "a verification failed");
            Reason::InternalError
        })
    }

    /// Every authority's verification of `digest`, by [`evidence_key`].
    async fn verify_all(
        &self,
        at: &ImageRef,
        digest: &Digest,
        platforms: &[Digest],
        fetched: Fetched<'_>,
        creds: &Credentials,
        source: &Source<'_>,
    ) -> Result<Verifications, Reason> {
        let checks = source.authorities.iter().map(|a| async move {
            let v = self.verification(at, digest, platforms, fetched, creds, a).await?;
            Ok::<_, Reason>((evidence_key(source.repository, a), v))
        });
        futures::future::try_join_all(checks).await.map(|v| v.into_iter().collect())
    }

    /// The credentials to read `source` with: its `signaturePullSecrets` when it names some, else the review's for
    /// its host (the Pod's pull secrets, then the config's).
    async fn source_credentials(&self, image: &ImageRef, source: &Source<'_>, review: &HostCredentials) -> Credentials {
        match (review_credentials(image, source, review), source.repository, &self.pull_secrets) {
            (Some(credentials), _, _) => credentials,
            (None, Some(repository), Some(secrets)) => {
                secrets.signature_credentials(repository.pull_secrets()).await.for_host(repository.registry())
            }
            (None, _, _) => Credentials::Anonymous,
        }
    }

    /// Resolves `image`, then for each signature source fetches the artifacts of its digest there and verifies them
    /// under each of the source's authorities. When some of them (`every_platform`) govern a policy that requires
    /// every platform, and the index verified under one of those, the platform manifests' signatures are fetched
    /// from the same source and verified too, at most `maxPlatforms` of them.
    async fn image(
        &self,
        image: &ImageRef,
        review: &HostCredentials,
        sources: &[Source<'_>],
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<ImageEvidence>, Reason> {
        self.evidence(image, review, sources, platforms_needed(sources), bytes, deadline).await
    }

    /// [`Gatherer::image`], reading an index's platform manifests only when `platforms_needed`. Once the digest is
    /// known, what was put together for it before is reused while every part of it would still be ([`memo`]).
    async fn evidence(
        &self,
        image: &ImageRef,
        review: &HostCredentials,
        sources: &[Source<'_>],
        platforms_needed: bool,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<ImageEvidence>, Reason> {
        let _permit = self.fetching.acquire().await.map_err(|_| shutting_down())?;
        let _in_flight = InFlight::enter(&self.metrics.fetches_in_flight);
        let creds = review.for_host(image.registry());
        let resolved = self.resolve(image, &creds, platforms_needed, bytes, deadline).await?;
        let digest = resolved.digest.clone();
        let memo_key = memo::Lookup::new(image, &digest, platforms_needed, review, sources).map(|l| l.key());
        if let Some(key) = &memo_key {
            let found = self.memo.get(key, std::time::Instant::now());
            self.metrics.images_memo[usize::from(found.is_some())].inc();
            if let Some(found) = found {
                return Ok(found);
            }
        }
        // Boxed, as the registry half of `resolve` is.
        Box::pin(self.fetch_evidence(image, review, sources, &resolved, memo_key, bytes, deadline)).await
    }

    /// The evidence of `image` at its `resolved` digest, read from each source and verified; kept under `memo_key`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_evidence(
        &self,
        image: &ImageRef,
        review: &HostCredentials,
        sources: &[Source<'_>],
        resolved: &Resolved,
        memo_key: Option<memo::Key>,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<ImageEvidence>, Reason> {
        let digest = resolved.digest.clone();
        let platforms = platforms_of(resolved);
        let each =
            sources.iter().map(|source| self.source(image, review, source, &digest, &platforms, bytes, deadline));
        let mut evidence = ImageEvidence {
            digest: digest.clone(),
            platforms: platforms.clone(),
            verified: Verifications::default(),
            platforms_verified: None,
            lookups: HashMap::new(),
            evidence: Default::default(),
            coverage: Coverage::default(),
            judged: Default::default(),
        };
        let mut expires: Option<std::time::Instant> = None;
        for (source, (verified, platforms_verified, lookup, until)) in sources.iter().zip(try_join_all(each).await?) {
            expires = Some(expires.map_or(until, |e| e.min(until)));
            evidence.verified.extend(verified);
            evidence.lookups.insert(source_key(source.repository).to_owned(), lookup);
            if let Some(found) = platforms_verified {
                let merged = evidence
                    .platforms_verified
                    .get_or_insert_with(|| found.iter().map(|(d, _)| (d.clone(), Verifications::default())).collect());
                for ((_, into), (_, from)) in merged.iter_mut().zip(found) {
                    into.extend(from);
                }
            }
        }
        let evidence = Arc::new(evidence);
        if let (Some(key), Some(expires)) = (memo_key, expires) {
            self.memo.insert(key, evidence.clone(), expires, std::time::Instant::now());
        }
        Ok(evidence)
    }

    /// What one signature source holds for `digest` (and, when its index verified under a policy requiring every
    /// platform, for each platform), verified.
    #[allow(clippy::too_many_arguments)]
    async fn source(
        &self,
        image: &ImageRef,
        review: &HostCredentials,
        source: &Source<'_>,
        digest: &Digest,
        platforms: &[Digest],
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<SourceEvidence, Reason> {
        let creds = self.source_credentials(image, source, review).await;
        let at = source.repository.map_or_else(|| image.clone(), |r| r.at(digest));
        let found = self.artifacts_of(&at, digest, &creds, source.wanted, bytes, deadline).await?;
        let mut expires = found.2;
        let missing = missing(&found.1, source.wanted).then_some(self.config.missing_ttl);
        let lookup = Lookup { repository: at.name(), storage: source.wanted.storage, missing };
        let fetched = Fetched { found: &found, wanted: source.wanted };
        let verified = self.verify_all(&at, digest, platforms, fetched, &creds, source).await?;
        let index_vouched = source.every_platform.iter().any(|a| {
            verified.get(&evidence_key(source.repository, a)).is_some_and(|v| !v.signatures.verified.is_empty())
        });
        if !index_vouched || platforms.is_empty() {
            return Ok((verified, None, lookup, expires));
        }
        if platforms.len() > self.config.max_platforms {
            let (count, max) = (platforms.len(), self.config.max_platforms);
            return Err(Reason::TooManyPlatforms { image: image.to_string(), count, max });
        }
        let (at, creds) = (&at, &creds);
        let fetches = platforms.iter().cloned().map(|d| async move {
            // A platform needs only its signature, from the places its index's are read.
            let wanted = Wanted { attestations: false, ..source.wanted };
            let found = self.artifacts_of(at, &d, creds, wanted, bytes, deadline).await?;
            let fetched = Fetched { found: &found, wanted };
            let checks = self.verify_all(at, &d, &[], fetched, creds, source).await?;
            Ok::<_, Reason>(((d, checks), found.2))
        });
        let each: Vec<_> = futures::stream::iter(fetches).buffered(PLATFORMS_AT_ONCE).try_collect().await?;
        let mut platforms_verified = Vec::with_capacity(each.len());
        for (verified, until) in each {
            platforms_verified.push(verified);
            expires = expires.min(until);
        }
        Ok((verified, Some(platforms_verified), lookup, expires))
    }
}

/// What one signature source gave: each authority's verification of the digest, of each platform when that was
/// needed, where it was read, and until when all of it may be reused.
type SourceEvidence = (Verifications, Option<Vec<(Digest, Verifications)>>, Lookup, std::time::Instant);

/// The credentials `source` is read with when the review alone gives them: the review's for the image's host, or
/// for a signature repository that names no pull secrets; `None` for one that does (read through the cluster).
fn review_credentials(image: &ImageRef, source: &Source<'_>, review: &HostCredentials) -> Option<Credentials> {
    match source.repository {
        None => Some(review.for_host(image.registry())),
        Some(repository) if repository.pull_secrets().is_empty() => Some(review.for_host(repository.registry())),
        Some(_) => None,
    }
}

/// Whether an index's platform manifests are needed for the sources: an attestation may name a platform, or an
/// authority requires every platform.
fn platforms_needed(sources: &[Source<'_>]) -> bool {
    sources.iter().any(|s| s.wanted.attestations || !s.every_platform.is_empty())
}

/// What a digest names is not needed when no platform is, and the digest is the answer: no request, no shared
/// flight.
fn resolved_at_once(image: &ImageRef, platforms: bool) -> Option<Arc<Resolved>> {
    let digest = image.digest().filter(|_| !platforms)?;
    Some(Arc::new(Resolved { digest: digest.clone(), media_type: String::new(), platforms: Vec::new() }))
}

/// Whether verifying `artifacts` under `authority` is cheap enough to run on the async worker: a key check of at most
/// [`IN_PLACE_LAYERS`] layers of at most [`IN_PLACE_BYTES`] in all.
fn verifies_in_place(authority: &Authority, artifacts: &Artifacts) -> bool {
    matches!(authority.trust(), Trust::Keys(_))
        && artifacts.layers().count() <= IN_PLACE_LAYERS
        && artifacts.bytes() <= IN_PLACE_BYTES
}

/// Whether `found` lacks what was asked for: no signature, or no attestation where one is wanted (a bundle may be
/// either). Such an answer is reused only for `missingTtl`.
fn missing(found: &Artifacts, wanted: Wanted) -> bool {
    let bundles = !found.bundles.is_empty();
    (found.signatures.is_empty() && !bundles) || (wanted.attestations && found.attestations.is_empty() && !bundles)
}

/// The signature sources of the policies governing one image (the image's own repository, or each distinct
/// `spec.signatures`), each with the authorities of its policies and what it must be asked for.
fn sources<'a>(needing: &[&'a Arc<Policy>], authorities: &Authorities) -> Vec<Source<'a>> {
    let mut out: Vec<Source<'a>> = Vec::with_capacity(1);
    for policy in needing {
        let repository = policy.signatures.as_deref();
        let at = match out.iter().position(|s| s.repository == repository) {
            Some(at) => at,
            None => {
                let authorities = Vec::with_capacity(policy.authorities.len());
                let wanted = Wanted { storage: Storage::NONE, attestations: false };
                out.push(Source { repository, authorities, every_platform: Vec::new(), wanted });
                out.len() - 1
            }
        };
        let source = &mut out[at];
        let resolved = authorities.of(policy).filter_map(|(_, resolution)| resolution?.as_ref().ok());
        for a in resolved {
            let same = |known: &Arc<Authority>| known.cache_key_str() == a.cache_key_str();
            if policy.requirements.platforms == Platforms::All && !source.every_platform.iter().any(same) {
                source.every_platform.push(a.clone());
            }
            if !source.authorities.iter().any(same) {
                source.authorities.push(a.clone());
            }
        }
        // A place is read when some policy reading this source looks there (every policy judges what is read), and
        // the `.att` tag only when one of them requires an attestation.
        source.wanted.storage = source.wanted.storage.union(policy.storage);
        source.wanted.attestations |= !policy.requirements.attestations.is_empty();
    }
    out
}

/// The sources of the images governed by one list of policies.
type Listed<'a> = (Vec<&'a Arc<Policy>>, Arc<Vec<Source<'a>>>);

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
    /// Cache lookups by cache (`manifests`, `artifacts`, `verifications`, `evidence`) and result.
    pub cache: Family<CacheLabels, Counter>,
    /// Seconds to compute one verification (signature checks of one digest under one authority).
    pub verification_seconds: Histogram,
    /// Images being fetched now (each holding one of `cache.maxConcurrentFetches` slots).
    pub fetches_in_flight: Gauge,
    /// Seconds from the start of a review's gathering to one image's evidence (or failure), per image gathered.
    pub image_seconds: Histogram,
    /// `cache` lookups of the `images` memo: misses, then hits (resolved once, as they are counted per image).
    images_memo: [Counter; 2],
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
        let cache: Family<CacheLabels, Counter> = Family::default();
        let images_memo =
            ["miss", "hit"].map(|result| cache.get_or_create(&CacheLabels { cache: "images", result }).clone());
        Self {
            images_memo,
            verifications: Counter::default(),
            cache,
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

/// Artifacts from every place but the `.att` tag.
const NO_ATT: Wanted = Wanted { storage: Storage::BOTH, attestations: false };

/// Artifacts as fetched, and what was asked for (part of every cache key that depends on them).
#[derive(Clone, Copy)]
struct Fetched<'a> {
    found: &'a Found,
    wanted: Wanted,
}

/// The artifacts of one fetch, numbered so that what is verified of them is keyed to exactly these, and until when
/// they are reused: `artifactsTtl` after the fetch, or `missingTtl` when they lack what was asked for.
type Found = (u64, Arc<Artifacts>, std::time::Instant);

/// (repository read, digest, credentials identity, what was asked).
type ArtifactsKey = (String, Digest, String, Wanted);

/// (repository read, digest, credentials identity, authority cache key, what was asked, whether an index's platforms
/// were acceptable subjects (a release list's are not), fetch number).
type VerificationKey = (String, Digest, String, Arc<str>, Wanted, bool, u64);

/// An artifacts entry is reused until the time it carries (see [`Found`]).
struct Freshness;

impl moka::Expiry<ArtifactsKey, Found> for Freshness {
    fn expire_after_create(&self, _: &ArtifactsKey, value: &Found, now: std::time::Instant) -> Option<Duration> {
        Some(value.2.saturating_duration_since(now))
    }
}

/// One place signatures are read from for an image, and who judges what is found there.
struct Source<'a> {
    /// A policy's `spec.signatures`; `None`: the image's own repository.
    repository: Option<&'a SignatureRepository>,
    /// Every authority of the policies reading this source.
    authorities: Vec<Arc<Authority>>,
    /// The authorities of those policies that require every platform.
    every_platform: Vec<Arc<Authority>>,
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
    use crate::artifact::Layer;
    use crate::images::{PodKind, Use, extract};
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

    #[test]
    fn only_small_key_verifications_run_in_place() {
        let key = Key::new();
        let authority = key.authority("chains");
        let d = digest("app");
        let small = artifacts(vec![key.signature(&d)], vec![key.provenance(&d, "https://tekton.dev/chains/v2")]);
        assert!(verifies_in_place(&authority, &small));
        let three =
            artifacts(vec![key.signature(&d), key.signature(&digest("x")), key.signature(&digest("y"))], vec![]);
        assert!(!verifies_in_place(&authority, &three), "three layers go to a blocking thread");
        let large =
            artifacts(vec![], vec![key.attestation(&d, "https://example.com/big", json!({"x": "a".repeat(70_000)}))]);
        assert!(!verifies_in_place(&authority, &large), "a large statement goes to a blocking thread");
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
    async fn a_warm_image_is_one_memo_lookup_and_a_change_in_what_it_was_built_from_misses_it() {
        let (ka, kb) = (Key::new(), Key::new());
        let r = Arc::new(MemoryRegistry::new());
        let d = signed_image(&r, APP, "1", "image", &ka);
        let pinned = format!("{APP}@{d}");
        let missing_ttl = Duration::from_millis(100);
        let g = gatherer(&r, CacheConfig { missing_ttl, ..CacheConfig::default() });
        let memo = |result| g.metrics.cache.get_or_create(&CacheLabels { cache: "images", result }).get();
        let set = policies(&[("p", &[("a", &ka)], "{signature: true}")]);
        let first = gather(&g, &plan_of(&set, &[&pinned])).await;
        let again = gather(&g, &plan_of(&set, &[&pinned])).await;
        let evidence = found(&again, &pinned).as_ref().unwrap();
        assert!(Arc::ptr_eq(found(&first, &pinned).as_ref().unwrap(), evidence), "the same evidence, not a copy");
        assert_eq!(evidence.verified.values().map(|v| v.signatures.verified.len()).sum::<usize>(), 1);
        assert_eq!((memo("miss"), memo("hit"), r.calls(Call::Artifacts)), (1, 1, 1));
        // No attestation was asked for, so none lacking is no absence: kept past the missing TTL.
        tokio::time::sleep(missing_ttl * 2).await;
        gather(&g, &plan_of(&set, &[&pinned])).await;
        assert_eq!((memo("miss"), memo("hit"), r.calls(Call::Artifacts)), (1, 2, 1));

        // The authority's key rotated: its verification is another, and verifies nothing.
        let rotated = policies(&[("p", &[("a", &kb)], "{signature: true}")]);
        let gathered = gather(&g, &plan_of(&rotated, &[&pinned])).await;
        let evidence = found(&gathered, &pinned).as_ref().unwrap();
        assert!(evidence.verified.values().all(|v| v.signatures.verified.is_empty()), "{evidence:?}");
        assert_eq!((memo("miss"), memo("hit")), (2, 2));
        // An attestation now required: the `.att` is fetched, not the memo read.
        let attested = policies(&[("p", &[("a", &ka)], "{attestations: [{name: b, predicateType: slsa}]}")]);
        gather(&g, &plan_of(&attested, &[&pinned])).await;
        assert_eq!((memo("miss"), memo("hit"), r.calls(Call::Artifacts)), (3, 2, 2));
        // Other pull credentials for the host: another identity, another lookup.
        let creds = HostCredentials::from_docker_config(
            br#"{"auths":{"registry.example.com":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let plan = plan_of(&set, &[&pinned]);
        g.gather(&plan, &creds, Instant::now() + Duration::from_secs(5), Duration::from_secs(5)).await;
        assert_eq!((memo("miss"), r.calls(Call::Artifacts)), (4, 3));
        // The artifacts' time to live passed: fetched again.
        g.forget_artifacts();
        gather(&g, &plan_of(&set, &[&pinned])).await;
        assert_eq!((memo("miss"), memo("hit"), r.calls(Call::Artifacts)), (5, 2, 4));
    }

    #[tokio::test]
    async fn a_remembered_image_is_answered_at_once_while_every_fetch_slot_waits_on_the_registry() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let warm_digest = signed_image(&r, APP, "1", "warm", &key);
        let warm = format!("{APP}@{warm_digest}");
        let cold = format!("{OTHER}@{}", signed_image(&r, OTHER, "1", "cold", &key));
        let g = gatherer(&r, CacheConfig { max_concurrent_fetches: 1, ..CacheConfig::default() });
        let set = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        gather(&g, &plan_of(&set, &[&warm])).await;
        r.hold_artifacts();
        let (warm_plan, cold_plan) = (plan_of(&set, &[&warm]), plan_of(&set, &[&cold]));
        let stalled = gather(&g, &cold_plan);
        tokio::pin!(stalled);
        assert!(futures::poll!(&mut stalled).is_pending(), "the cold image holds the only fetch slot");
        assert_eq!(r.calls(Call::Artifacts), 2, "and waits on the registry");
        // The warm image asks for nothing and waits for nothing: it is answered on its first poll.
        let std::task::Poll::Ready(answered) = futures::poll!(std::pin::pin!(gather(&g, &warm_plan))) else {
            panic!("a remembered image waited behind a fetch");
        };
        let evidence = found(&answered, &warm).as_ref().unwrap();
        assert_eq!(evidence.verified.values().map(|v| v.signatures.verified.len()).sum::<usize>(), 1);
        // The same digest written with any tag, or with the host in another case, is the same
        // remembered evidence; a digest not remembered is not answered from it.
        for alias in [format!("{APP}:whatever@{warm_digest}"), format!("Registry.Example.com/team/app@{warm_digest}")] {
            let plan = plan_of(&set, &[&alias]);
            let std::task::Poll::Ready(aliased) = futures::poll!(std::pin::pin!(gather(&g, &plan))) else {
                panic!("{alias} waited behind a fetch");
            };
            assert!(Arc::ptr_eq(found(&aliased, &alias).as_ref().unwrap(), evidence), "{alias}");
        }
        let unknown = format!("{APP}@{}", digest("never reviewed"));
        let unknown_plan = plan_of(&set, &[&unknown]);
        assert!(futures::poll!(std::pin::pin!(gather(&g, &unknown_plan))).is_pending(), "{unknown} is fetched");
        r.release();
        let fetched = stalled.await;
        assert!(found(&fetched, &cold).is_ok(), "{:?}", found(&fetched, &cold));
        assert_eq!(r.calls(Call::Artifacts), 2);
    }

    #[tokio::test]
    async fn an_absence_is_reused_from_the_memo_only_until_the_missing_ttl_from_its_fetch() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let d = digest("late");
        r.put_manifest(APP, &d, crate::registry::memory::MANIFEST);
        let pinned = format!("{APP}@{d}");
        let ttl = Duration::from_millis(300);
        let g = gatherer(&r, CacheConfig { missing_ttl: ttl, ..CacheConfig::default() });
        let set = policies(&[("p", &[("a", &key)], "{signature: true}")]);
        let unsigned = |g: &Gathered| {
            found(g, &pinned).as_ref().unwrap().verified.values().all(|v| v.signatures.verified.is_empty())
        };
        assert!(unsigned(&gather(&g, &plan_of(&set, &[&pinned])).await));
        r.put_artifacts(APP, &d, artifacts(vec![key.signature(&d)], vec![]));
        assert!(unsigned(&gather(&g, &plan_of(&set, &[&pinned])).await), "within the missing TTL");
        assert_eq!(r.calls(Call::Artifacts), 1);
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert!(!unsigned(&gather(&g, &plan_of(&set, &[&pinned])).await), "signed, and looked at again");
        assert_eq!(r.calls(Call::Artifacts), 2);
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

    /// Under `platforms: all`, each platform's signature is read from the places the policy names, as its index's.
    #[tokio::test]
    async fn a_platform_signature_is_read_from_the_places_the_policy_names() {
        let key = Key::new();
        let (index, amd, arm) = (digest("index"), digest("amd64"), digest("arm64"));
        let r = Arc::new(MemoryRegistry::new());
        r.put_index(APP, &index, &[(amd.clone(), "linux", "amd64"), (arm.clone(), "linux", "arm64")]);
        r.tag(APP, "1", &index);
        r.put_artifacts(APP, &index, artifacts(vec![key.signature(&index)], vec![]));
        r.put_artifacts(APP, &amd, artifacts(vec![key.signature(&amd)], vec![]));
        // arm64 is signed by a referrer only.
        let referrer = crate::artifact::Origin::Referrer { manifest: digest("arm64 referrer"), artifact_type: None };
        r.put_artifacts(APP, &arm, artifacts(vec![Layer { origin: referrer, ..key.signature(&arm) }], vec![]));
        let policy = policy_reading("p", &key, None, "{signature: true, platforms: all}");
        let tags = policy.replace("  authorities:", "  signatures: {storage: [tags]}\n  authorities:");
        for (doc, arm_signatures) in [(policy, 1), (tags, 0)] {
            let set = load(&[doc]);
            let g = gatherer(&r, CacheConfig::default());
            let gathered = gather(&g, &plan_of(&set, &[&format!("{APP}:1")])).await;
            let evidence = found(&gathered, &format!("{APP}:1")).as_ref().unwrap();
            let verified: Vec<(Digest, usize)> = evidence
                .platforms_verified
                .iter()
                .flatten()
                .map(|(d, v)| (d.clone(), v.values().map(|v| v.signatures.verified.len()).sum()))
                .collect();
            assert_eq!(verified, [(amd.clone(), 1), (arm.clone(), arm_signatures)], "{}", set.policies()[0].name);
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
        let secret = gathered.authorities.get("p", "secret").unwrap().as_ref().unwrap_err();
        assert_eq!(secret.code(), "key-no-client");
        assert!(gathered.authorities.get("p", "a").unwrap().is_ok());
        let evidence = found(&gathered, &format!("{APP}:1")).as_ref().unwrap();
        assert_eq!(evidence.verified.len(), 1, "only the authority with a key is verified");
    }

    /// A policy `name` trusting `key` as authority `a`, reading signatures from `signatures` when given.
    fn policy_reading(name: &str, key: &Key, signatures: Option<&str>, require: &str) -> String {
        let mut doc = format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  match: \
             {{images: [\"registry.example.com/**\"]}}\n  require: {require}\n"
        );
        if let Some(repository) = signatures {
            doc.push_str(&format!("  signatures: {{repository: {repository:?}}}\n"));
        }
        doc.push_str("  authorities:\n    - name: a\n      key: |\n");
        for line in key.pem().lines() {
            doc.push_str(&format!("        {line}\n"));
        }
        doc
    }

    fn load(docs: &[String]) -> PolicySet {
        load_sources(&[(PathBuf::from("p.yaml"), docs.join("---\n"))]).unwrap()
    }

    /// What policy `name` made of `image` in `gathered` (its verdict codes; empty: it passes).
    fn codes(set: &PolicySet, gathered: &Gathered, image: &str, name: &str) -> Vec<&'static str> {
        let policy = set.policies().iter().find(|p| p.name == name).unwrap();
        let image = ImageRef::parse(image).unwrap();
        let context = crate::check::ReviewContext::new(&json!({}), "team-a", &json!({}), chrono::Utc::now());
        let checked =
            crate::check::check(policy, &image, Use::Run, gathered.images.get(&image), &gathered.authorities, &context);
        checked.unmet.iter().map(Reason::code).collect()
    }

    #[tokio::test]
    async fn each_policy_reads_signatures_from_its_own_repository_and_only_there() {
        let (key, other) = (Key::new(), Key::new());
        let r = Arc::new(MemoryRegistry::new());
        let d = digest("app");
        r.put_manifest(APP, &d, crate::registry::memory::MANIFEST);
        r.tag(APP, "1", &d);
        let sigs = "registry.example.com/team/sigs";
        let elsewhere = "registry.example.com/other/sigs";
        // Signed by `key` in sigs; by `other` beside the image; in `elsewhere`, a valid signature of another digest.
        r.put_artifacts(sigs, &d, artifacts(vec![key.signature(&d)], vec![]));
        r.put_artifacts(APP, &d, artifacts(vec![other.signature(&d)], vec![]));
        r.put_artifacts(elsewhere, &d, artifacts(vec![key.signature(&digest("another image"))], vec![]));
        let yes = "{signature: true}";
        let set = load(&[
            // Written under an alias of the host: normalised like images.
            policy_reading("sigs", &key, Some("REGISTRY.example.com:443/team/sigs"), yes),
            policy_reading("own", &other, None, yes),
            policy_reading("own-with-sigs-key", &key, None, yes),
            policy_reading("replayed", &key, Some(elsewhere), yes),
            policy_reading("sigs-with-own-key", &other, Some(sigs), yes),
        ]);
        let image = format!("{APP}:1");
        let g = gatherer(&r, CacheConfig::default());
        let gathered = gather(&g, &plan_of(&set, &[&image])).await;
        assert_eq!(codes(&set, &gathered, &image, "sigs"), Vec::<&str>::new());
        assert_eq!(codes(&set, &gathered, &image, "own"), Vec::<&str>::new());
        // The right key's signature sits in sigs, not beside the image: the image's own repository has no credit.
        assert_eq!(codes(&set, &gathered, &image, "own-with-sigs-key"), ["wrong-key"]);
        assert_eq!(codes(&set, &gathered, &image, "replayed"), ["digest-mismatch"]);
        // What the image's own repository holds is not looked at for a policy that names another.
        assert_eq!(codes(&set, &gathered, &image, "sigs-with-own-key"), ["wrong-key"]);
        let read: Vec<String> =
            r.made().into_iter().filter(|m| m.call == Call::Artifacts).map(|m| m.name.unwrap()).collect();
        assert_eq!(read.len(), 3, "one fetch per repository: {read:?}");
        for repository in [APP, sigs, elsewhere] {
            assert!(read.iter().any(|n| n == repository), "{repository} in {read:?}");
        }
        let evidence = found(&gathered, &image).as_ref().unwrap();
        assert_eq!(evidence.lookups.len(), 3);
    }

    #[tokio::test]
    async fn a_policy_reads_only_the_places_its_storage_names_and_an_image_governed_by_several_reads_all_they_name() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        // `app` is signed under its `.sig` tag only; `other` only by a referrer (cosign's `oci-1-1` referrers mode).
        let (in_tags, in_referrers) = (digest("in tags"), digest("in referrers"));
        for (repository, d) in [(APP, &in_tags), (OTHER, &in_referrers)] {
            r.put_manifest(repository, d, crate::registry::memory::MANIFEST);
            r.tag(repository, "1", d);
        }
        r.put_artifacts(APP, &in_tags, artifacts(vec![key.signature(&in_tags)], vec![]));
        let referrer = crate::artifact::Origin::Referrer { manifest: digest("referrer"), artifact_type: None };
        let by_referrer = Layer { origin: referrer, ..key.signature(&in_referrers) };
        r.put_artifacts(OTHER, &in_referrers, artifacts(vec![by_referrer], vec![]));
        let storing = |name: &str, storage: &str| {
            let doc = policy_reading(name, &key, None, "{signature: true}");
            doc.replace("  authorities:", &format!("  signatures: {{storage: {storage}}}\n  authorities:"))
        };
        let (tags, referrers, both) =
            (storing("tags", "[tags]"), storing("referrers", "[referrers]"), storing("both", "[referrers, tags]"));
        let images = [format!("{APP}:1"), format!("{OTHER}:1")];
        let (app, other) = (images[0].as_str(), images[1].as_str());
        let none = Vec::<&str>::new();
        // Each alone: a signature in a place the policy does not name is not read, so it is not there.
        for (doc, name, want_app, want_other) in [
            (&tags, "tags", none.clone(), vec!["unsigned"]),
            (&referrers, "referrers", vec!["unsigned"], none.clone()),
            (&both, "both", none.clone(), none.clone()),
        ] {
            let set = load(std::slice::from_ref(doc));
            let g = gatherer(&r, CacheConfig::default());
            let gathered = gather(&g, &plan_of(&set, &[app, other])).await;
            assert_eq!(codes(&set, &gathered, app, name), want_app, "{name} on the image signed in its tags");
            assert_eq!(codes(&set, &gathered, other, name), want_other, "{name} on the image signed by a referrer");
            let evidence = found(&gathered, other).as_ref().unwrap();
            let note = evidence.absence(None);
            if name == "tags" {
                let note = note.unwrap();
                assert!(note.contains("(only its cosign tags: signatures.storage names no referrers)"), "{note}");
            }
        }
        // Everything read before (a report reads every place) is narrowed to the places named, not taken whole.
        let set = load(std::slice::from_ref(&tags));
        let g = gatherer(&r, CacheConfig::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        let inspected = g.inspect(&ImageRef::parse(other).unwrap(), deadline).await.unwrap();
        assert_eq!(inspected.artifacts.signatures.len(), 1, "the report read the referrer");
        let gathered = gather(&g, &plan_of(&set, &[other])).await;
        assert_eq!(codes(&set, &gathered, other, "tags"), ["unsigned"]);
        // Two policies governing one image: it is read in every place either names, and both judge what is read.
        let set = load(&[tags.clone(), referrers.clone()]);
        let g = gatherer(&r, CacheConfig::default());
        let gathered = gather(&g, &plan_of(&set, &[app, other])).await;
        for (image, name) in [(app, "tags"), (app, "referrers"), (other, "tags"), (other, "referrers")] {
            assert_eq!(codes(&set, &gathered, image, name), none, "{name} on {image}");
        }
    }

    #[tokio::test]
    async fn images_governed_by_different_policies_in_one_review_each_read_their_policies_sources() {
        let (a, b) = (Key::new(), Key::new());
        let r = Arc::new(MemoryRegistry::new());
        let both = "registry.example.com/team/both";
        signed_image(&r, APP, "1", "app", &a);
        signed_image(&r, OTHER, "1", "other", &b);
        let d = digest("both");
        r.put_manifest(both, &d, crate::registry::memory::MANIFEST);
        r.tag(both, "1", &d);
        r.put_artifacts(both, &d, artifacts(vec![a.signature(&d), b.signature(&d)], vec![]));
        let governing = |doc: String, globs: &str| doc.replace("[\"registry.example.com/**\"]", globs);
        let yes = "{signature: true}";
        let set = load(&[
            governing(policy_reading("app", &a, None, yes), &format!("[{APP:?}, {both:?}]")),
            governing(policy_reading("other", &b, None, yes), &format!("[{OTHER:?}, {both:?}]")),
        ]);
        let g = gatherer(&r, CacheConfig::default());
        // One policy, then both, then the other one alone, then the first again: each image reads with the
        // authorities of exactly the policies that govern it.
        let images = [format!("{APP}:1"), format!("{both}:1"), format!("{OTHER}:1"), format!("{APP}:1")];
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        let gathered = gather(&g, &plan_of(&set, &images)).await;
        let none = Vec::<&str>::new();
        assert_eq!(codes(&set, &gathered, images[0], "app"), none);
        assert_eq!(codes(&set, &gathered, images[1], "app"), none);
        assert_eq!(codes(&set, &gathered, images[1], "other"), none);
        assert_eq!(codes(&set, &gathered, images[2], "other"), none);
        let verified = |image: &str| found(&gathered, image).as_ref().unwrap().verified.len();
        assert_eq!([verified(images[0]), verified(images[1]), verified(images[2])], [1, 2, 1]);
    }

    #[tokio::test]
    async fn an_absence_says_where_it_looked_and_when_it_looks_again_and_a_find_does_not() {
        let key = Key::new();
        let r = Arc::new(MemoryRegistry::new());
        let d = digest("late");
        r.put_manifest(APP, &d, crate::registry::memory::MANIFEST);
        r.tag(APP, "1", &d);
        let set = load(&[policy_reading("p", &key, Some("registry.example.com/team/sigs"), "{signature: true}")]);
        let image = format!("{APP}:1");
        let cache = CacheConfig { missing_ttl: Duration::from_secs(7), ..CacheConfig::default() };
        let g = gatherer(&r, cache);
        let gathered = gather(&g, &plan_of(&set, &[&image])).await;
        let policy = &set.policies()[0];
        let evidence = found(&gathered, &image).as_ref().unwrap();
        let note = evidence.absence(policy.signatures.as_deref()).unwrap();
        assert!(note.starts_with("looked in registry.example.com/team/sigs; the signature may not be published yet"));
        assert!(note.ends_with("provgate looks again within 7s"), "{note}");
        let context = crate::check::ReviewContext::new(&json!({}), "team-a", &json!({}), chrono::Utc::now());
        let checked = crate::check::check(
            policy,
            &ImageRef::parse(&image).unwrap(),
            Use::Run,
            Some(&Ok(evidence.clone())),
            &gathered.authorities,
            &context,
        );
        let message = checked.unmet[0].to_string();
        assert!(message.contains(": no signatures found for"), "{message}");
        assert!(message.ends_with(&note), "{message}");
        // Signed in the image's own repository only: still nothing where this policy looks.
        r.put_artifacts(APP, &d, artifacts(vec![key.signature(&d)], vec![]));
        g.forget_artifacts();
        let gathered = gather(&g, &plan_of(&set, &[&image])).await;
        assert!(found(&gathered, &image).as_ref().unwrap().absence(policy.signatures.as_deref()).is_some());
        r.put_artifacts("registry.example.com/team/sigs", &d, artifacts(vec![key.signature(&d)], vec![]));
        g.forget_artifacts();
        let gathered = gather(&g, &plan_of(&set, &[&image])).await;
        assert_eq!(found(&gathered, &image).as_ref().unwrap().absence(policy.signatures.as_deref()), None);
    }

    #[tokio::test]
    async fn what_is_missing_is_the_wanted_kind_and_concurrent_gathers_share_one_fetch() {
        let key = Key::new();
        let d = digest("x");
        let sig = || vec![key.signature(&d)];
        let att = || vec![key.provenance(&d, "https://tekton.dev/chains/v2")];
        let (none, all) = (NO_ATT, Wanted::ALL);
        let table = [
            ("nothing", artifacts(vec![], vec![]), none, true),
            ("a signature", artifacts(sig(), vec![]), none, false),
            ("a signature, attestations wanted", artifacts(sig(), vec![]), all, true),
            ("an attestation only", artifacts(vec![], att()), all, true),
            ("both", artifacts(sig(), att()), all, false),
        ];
        for (what, found, wanted, want) in table {
            assert_eq!(missing(&found, wanted), want, "{what}");
        }
        let r = Arc::new(MemoryRegistry::new());
        r.put_manifest(APP, &d, crate::registry::memory::MANIFEST);
        r.tag(APP, "1", &d);
        let set = load(&[policy_reading("p", &key, None, "{signature: true}")]);
        let plan = plan_of(&set, &[&format!("{APP}:1")]);
        let g = gatherer(&r, CacheConfig::default());
        let gathers: Vec<_> = (0..8).map(|_| gather(&g, &plan)).collect();
        join_all(gathers).await;
        assert_eq!(r.calls_for(Call::Artifacts, &d), 1, "an absence is fetched once for concurrent reviews");
        assert_eq!(g.metrics.verifications.get(), 1);
    }
}
