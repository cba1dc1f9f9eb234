//! Gathers what may cover an image besides statements about its own digest: each release list its policies name
//! (resolved and verified like an image, then, once its signature verified, read within `cache.maxListBytes` and
//! `cache.maxListEntries` and cached by digest) and, for an image volume under `coverLayers`, the layers of its
//! manifest with the statements about them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Authorities, CacheConfig, Found, Gatherer, ImageEvidence, evidence_key, registry_reason, sources};
use crate::coverage::layers::layers_of;
use crate::coverage::list::{self, ListError, ListLimits, ReleaseList, Shape};
use crate::images::{Digest, ImageRef, Use};
use crate::policy::Policy;
use crate::reason::Reason;
use crate::registry::{Budget, ContentKind, HostCredentials, RegistryError, Wanted};
use crate::verify::{self, AttestationCheck, Authority};

/// What was gathered for an image besides its own statements.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// Each release list the governing policies name (`via.list`, as compiled), or why it could not be gathered.
    pub lists: HashMap<ImageRef, Result<Arc<ListEvidence>, Reason>>,
    /// The mounted artifact's layers and the statements about them: only for an image volume that some governing
    /// policy lets be covered by its layers (`coverLayers`).
    pub layers: Option<Result<Arc<LayerEvidence>, Reason>>,
}

/// One release list, verified like an image.
#[derive(Debug)]
pub struct ListEvidence {
    /// The list's digest and what the authorities of the policies naming it verified of it (its statements count
    /// only when they name the list's own digest).
    pub evidence: ImageEvidence,
    /// What the list pins: read only once its signature verified under one of those authorities (`None` before),
    /// so an unsigned list is never downloaded.
    pub content: Option<Result<Arc<ReleaseList>, Reason>>,
}

/// The layers of a mounted artifact and what each authority verified about them.
#[derive(Debug)]
pub struct LayerEvidence {
    /// The distinct layers of the manifest at the image's digest (read by that digest and checked against it), or
    /// why it has none a statement could cover.
    pub layers: Layers,
    /// By [`evidence_key`]: the statements that authority verified naming at least one of the layers.
    pub verified: HashMap<Arc<str>, Arc<AttestationCheck>>,
}

/// Why a list's content was not read: the registry failed, or sent more than the cap (neither is kept).
enum Unread {
    Registry(RegistryError),
    Cut(ListError),
}

/// The distinct layers of a manifest, or why it has none a statement could cover.
type Layers = Result<Arc<Vec<Digest>>, String>;

/// Coverage caches: all content-addressed (by digest), bounded by size.
pub(super) struct Store {
    limits: ListLimits,
    /// (list `name@digest`, credentials identity) -> what it pins, or why it cannot be used (both follow from the
    /// digest's bytes, so both are kept).
    lists: moka::future::Cache<(String, String), Result<Arc<ReleaseList>, ListError>>,
    /// (`name@digest`, credentials identity) -> the manifest's layers, or why it has none to cover.
    layers: moka::future::Cache<(String, String), Layers>,
    /// (repository read, digest, credentials identity, authority cache key, fetch number) -> the statements that
    /// authority verified about the layers of exactly those artifacts.
    checks: moka::future::Cache<LayerCheckKey, Arc<AttestationCheck>>,
}

impl Store {
    pub(super) fn new(config: &CacheConfig) -> Self {
        let weight = |n: u64| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let lists = moka::future::Cache::builder()
            .max_capacity(config.max_artifact_bytes)
            .weigher(move |_, found: &Result<Arc<ReleaseList>, ListError>| {
                weight(found.as_ref().map_or(1, |l| l.weight()))
            })
            .build();
        let layers = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .weigher(move |_, found: &Layers| weight(found.as_ref().map_or(1, |l| l.len() as u64)))
            .build();
        let checks = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .weigher(move |_, c: &Arc<AttestationCheck>| weight(c.found() as u64))
            .time_to_live(config.artifacts_ttl)
            .build();
        let limits = ListLimits { max_bytes: config.max_list_bytes, max_entries: config.max_list_entries };
        Self { limits, lists, layers, checks }
    }
}

/// Whether the `needing` policies of an image used as `usage` look for anything to cover it besides its own
/// statements: a release list, or (for an image volume) its layers.
pub(super) fn wanted(needing: &[&Arc<Policy>], usage: Use) -> bool {
    needing
        .iter()
        .flat_map(|p| &p.requirements.attestations)
        .any(|a| a.via.is_some() || (usage == Use::Mount && a.cover_layers))
}

impl Gatherer {
    /// Adds to `evidence` what may cover `image` besides its own statements: the release lists its `needing`
    /// policies name, and for an image volume (`usage`) under `coverLayers`, its layers and the statements about
    /// them. A list or the layers that cannot be gathered is a reason of its own, for the policies that read it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cover(
        &self,
        mut evidence: ImageEvidence,
        image: &ImageRef,
        needing: &[&Arc<Policy>],
        usage: Use,
        review: &HostCredentials,
        authorities: &Authorities,
        bytes: &Budget,
        deadline: Instant,
    ) -> ImageEvidence {
        let mut naming: Vec<(&ImageRef, Vec<&Arc<Policy>>)> = Vec::new();
        for policy in needing {
            for via in policy.requirements.attestations.iter().filter_map(|a| a.via.as_ref()) {
                match naming.iter_mut().find(|(list, _)| *list == &via.list) {
                    Some((_, policies)) if policies.iter().any(|p| Arc::ptr_eq(p, policy)) => {}
                    Some((_, policies)) => policies.push(policy),
                    None => naming.push((&via.list, vec![policy])),
                }
            }
        }
        let layered: Vec<&Arc<Policy>> = needing
            .iter()
            .copied()
            .filter(|p| usage == Use::Mount && p.requirements.attestations.iter().any(|a| a.cover_layers))
            .collect();
        if naming.is_empty() && layered.is_empty() {
            return evidence;
        }
        let lists = naming.iter().map(|(list, policies)| async move {
            let gathered = self.list(list, policies, review, authorities, bytes, deadline).await;
            ((*list).clone(), gathered.map(Arc::new))
        });
        let digest = evidence.digest.clone();
        let layers = async {
            if layered.is_empty() {
                return None;
            }
            let gathered = self.layers(image, &digest, &layered, review, authorities, bytes, deadline).await;
            Some(gathered.map(Arc::new))
        };
        let (lists, layers) = futures::join!(futures::future::join_all(lists), layers);
        evidence.coverage = Coverage { lists: lists.into_iter().collect(), layers };
        evidence
    }

    /// The release list `list`, verified under the authorities of the `policies` naming it where those policies read
    /// signatures, and once its signature verified under one of them, what it pins.
    async fn list(
        &self,
        list: &ImageRef,
        policies: &[&Arc<Policy>],
        review: &HostCredentials,
        authorities: &Authorities,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<ListEvidence, Reason> {
        let mut read_from = sources(policies, authorities);
        for source in &mut read_from {
            // The list's attestation is required; its entries are no platforms of it.
            source.wanted.attestations = true;
            source.every_platform.clear();
        }
        // Its manifest is read below, within the list's cap, and only once its signature verified.
        let evidence = Arc::unwrap_or_clone(self.evidence(list, review, &read_from, false, bytes, deadline).await?);
        let vouched = evidence.verified.values().any(|v| !v.signatures.verified.is_empty());
        let content = match vouched {
            true => Some(self.list_content(list, &evidence.digest, review, bytes, deadline).await),
            false => None,
        };
        Ok(ListEvidence { evidence, content })
    }

    /// What the list manifest `digest` pins: an index's manifests, or the references in an artifact's one JSON
    /// blob, each read within `cache.maxListBytes`; cached by digest.
    async fn list_content(
        &self,
        list: &ImageRef,
        digest: &Digest,
        review: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Arc<ReleaseList>, Reason> {
        let creds = review.for_host(list.registry());
        let limits = self.coverage.limits;
        // A read cut at the cap is not kept: the bytes were never checked against the digest, so a registry that
        // sent too much once (a proxy's error page) is asked again at the next review.
        let read = |what: &'static str, at: Digest, kind| {
            let creds = &creds;
            async move {
                self.registry.content(list, &at, kind, limits.max_bytes, creds, bytes, deadline).await.map_err(|e| {
                    match e {
                        RegistryError::TooLarge { .. } => {
                            Unread::Cut(ListError::too_many_bytes(&format!("{what} {at}"), limits.max_bytes))
                        }
                        other => Unread::Registry(other),
                    }
                })
            }
        };
        let fetch = async {
            let manifest = read("manifest", digest.clone(), ContentKind::Manifest).await?;
            Ok::<_, Unread>(match list::from_manifest(digest, &manifest, &limits) {
                Err(e) => Err(e),
                Ok(Shape::Index(pins)) => Ok(Arc::new(pins)),
                Ok(Shape::Artifact { blob, artifact_type }) => {
                    let data = read("blob", blob.digest, ContentKind::Blob).await?;
                    list::from_blob(digest, artifact_type, &data, &limits).map(Arc::new)
                }
            })
        };
        let key = (format!("{}@{digest}", list.name()), creds.fingerprint());
        let named = list.with_digest(digest.clone());
        match self.metrics.cached("lists", &self.coverage.lists, key, fetch).await {
            Ok(found) => found.map_err(|e| e.reason(&named)),
            Err(unread) => match &*unread {
                Unread::Registry(e) => Err(registry_reason(list, e)),
                Unread::Cut(e) => Err(e.reason(&named)),
            },
        }
    }

    /// The layers of the manifest `digest` of `image` and, for each signature source of the `layered` policies,
    /// what each of its authorities verified about them (from the artifacts the image's own gathering fetched).
    #[allow(clippy::too_many_arguments)]
    async fn layers(
        &self,
        image: &ImageRef,
        digest: &Digest,
        layered: &[&Arc<Policy>],
        review: &HostCredentials,
        authorities: &Authorities,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<LayerEvidence, Reason> {
        let creds = review.for_host(image.registry());
        let fetch = async {
            // The registry's manifest cap bounds the read; the bytes are checked against the pinned digest.
            let manifest =
                self.registry.content(image, digest, ContentKind::Manifest, u64::MAX, &creds, bytes, deadline);
            Ok::<_, RegistryError>(layers_of(digest, &manifest.await?).map(Arc::new))
        };
        let key = (format!("{}@{digest}", image.name()), creds.fingerprint());
        let layers = self.metrics.cached("layers", &self.coverage.layers, key, fetch).await;
        let layers = layers.map_err(|e| registry_reason(image, &e))?;
        let mut verified = HashMap::new();
        let Ok(found_layers) = &layers else { return Ok(LayerEvidence { layers, verified }) };
        for source in sources(layered, authorities) {
            let creds = self.source_credentials(image, &source, review).await;
            let at = source.repository.map_or_else(|| image.clone(), |r| r.at(digest));
            let found = self.artifacts_of(&at, digest, &creds, source.wanted, bytes, deadline).await?;
            for authority in &source.authorities {
                let key =
                    (at.name(), digest.clone(), creds.fingerprint(), authority.cache_key(), source.wanted, found.0);
                let check = self.layer_check(key, &found, found_layers, authority).await?;
                verified.insert(evidence_key(source.repository, authority), check);
            }
        }
        Ok(LayerEvidence { layers, verified })
    }

    /// What `authority` verifies of the statements in `found` about any of `layers`: computed once per artifacts
    /// fetch on a blocking thread, and cached.
    async fn layer_check(
        &self,
        key: LayerCheckKey,
        found: &Found,
        layers: &Arc<Vec<Digest>>,
        authority: &Authority,
    ) -> Result<Arc<AttestationCheck>, Reason> {
        let (artifacts, layers, authority) = (found.1.clone(), layers.clone(), authority.clone());
        let compute = async move {
            tokio::task::spawn_blocking(move || {
                Arc::new(verify::attestations(&artifacts, &layers, std::slice::from_ref(&authority)))
            })
            .await
        };
        self.metrics.cached("layer-verifications", &self.coverage.checks, key, compute).await.map_err(|e| {
            tracing::error!(error = %e, "a layer verification failed");
            Reason::InternalError
        })
    }
}

/// (repository, manifest digest, credentials identity, authority cache key, what was asked, fetch number) of a layer
/// check: one fetch narrowed to what a source asked for ([`Gatherer::artifacts_of`]) holds fewer layers.
type LayerCheckKey = (String, Digest, String, Arc<str>, Wanted, u64);

#[cfg(test)]
#[path = "coverage_tests.rs"]
mod tests;
