//! The gatherer's evidence hook: for each policy that declares `spec.evidence` and whose requirements the image
//! meets, `from` is evaluated over what verified (the input its validations get), and the selected descriptors are
//! fetched by digest (from an OCI repository through the registry client, with its credentials, caps, deadline and
//! metrics; or from an HTTPS store), checked against the signed sha256, parsed and normalised: concurrently, and
//! cached by (store, digest, credentials identity, media type), bounded by bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt as _, TryStreamExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::document::{ByPolicy, Descriptor, Document, EvidenceError, Found, Item};
use super::spec::{EvidenceDecl, MAX_SELECTED, Store};
use super::store::HttpsStores;
use super::{normalise, select};
use crate::gather::{Authorities, CacheLabels, EvidenceFetch, ImageEvidence};
use crate::images::{Digest, ImageRef};
use crate::policy::eval::{ImageInput, Limits};
use crate::policy::{Policy, engine};
use crate::registry::{Budget, HostCredentials, Registry, RegistryConfig, RegistryError};

/// Documents of one evidence entry fetched at once.
const AT_ONCE: usize = 4;

/// The `evidence:` section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EvidenceConfig {
    /// Bytes of evidence documents (as fetched) kept in the cache; documents are content-addressed, so an entry
    /// never goes stale and is evicted only for room.
    pub max_cache_bytes: u64,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self { max_cache_bytes: 16 << 20 }
    }
}

/// (store, sha256, credentials identity, media type).
type CacheKey = (String, String, String, String);

/// Fetches policies' evidence; one per process, shared by every review.
pub struct Fetcher {
    registry: Arc<dyn Registry>,
    https: HttpsStores,
    cache: moka::future::Cache<CacheKey, Arc<Document>>,
    /// `provgate_cache_requests_total{cache="evidence"}`.
    metrics: Family<CacheLabels, Counter>,
}

impl Fetcher {
    /// Reads OCI stores through `registry`, HTTPS stores with the TLS trust `registries` gives their hosts.
    pub fn new(
        registry: Arc<dyn Registry>,
        registries: &RegistryConfig,
        config: &EvidenceConfig,
    ) -> Result<Self, String> {
        let weight = |_: &CacheKey, d: &Arc<Document>| u32::try_from(d.bytes).unwrap_or(u32::MAX).max(1);
        let cache = moka::future::Cache::builder().max_capacity(config.max_cache_bytes).weigher(weight).build();
        Ok(Self { registry, https: HttpsStores::new(registries)?, cache, metrics: Family::default() })
    }

    /// Counts cache lookups into `cache` (the gatherer's `provgate_cache_requests_total`).
    pub fn with_metrics(mut self, cache: Family<CacheLabels, Counter>) -> Self {
        self.metrics = cache;
        self
    }

    /// Every document one entry selects from `input`.
    async fn entry(
        &self,
        decl: &EvidenceDecl,
        input: &ImageInput,
        credentials: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Vec<Item>, EvidenceError> {
        let selection = |detail: String| EvidenceError::Selection { detail };
        let engine = engine().map_err(|e| selection(e.to_string()))?;
        // CEL runs on a blocking thread, as judging does.
        let (input, from) = (input.clone(), decl.from.clone());
        let select = tokio::task::spawn_blocking(move || engine.select(&input, &Limits::default(), &from));
        let results = select.await.map_err(|e| selection(e.to_string()))?.map_err(selection)?;
        let descriptors = select::descriptors(&results, MAX_SELECTED)?;
        let fetches = descriptors.into_iter().map(|d| self.item(decl, d, credentials, bytes, deadline));
        futures::stream::iter(fetches).buffered(AT_ONCE).try_collect().await
    }

    /// One document, from the cache or the store.
    async fn item(
        &self,
        decl: &EvidenceDecl,
        descriptor: Descriptor,
        credentials: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Item, EvidenceError> {
        let store = decl.store.key();
        let identity = match &decl.store {
            Store::Oci(repository) => credentials.for_host(repository.registry()).fingerprint(),
            Store::Https { .. } => String::new(),
        };
        let key = (store.clone(), descriptor.sha256.clone(), identity, decl.media_type.clone());
        let missed = AtomicBool::new(false);
        let read = async {
            missed.store(true, Ordering::Relaxed);
            let fetched = self.fetch(decl, &descriptor.sha256, credentials, bytes, deadline).await?;
            let unparsable = |detail: String| EvidenceError::Unparsable {
                store: store.clone(),
                sha256: descriptor.sha256.clone(),
                expected: decl.expected.describe(),
                detail,
            };
            normalise::read(&fetched, decl.expected).map(Arc::new).map_err(unparsable)
        };
        let found = self.cache.try_get_with(key, read).await;
        let result = if missed.load(Ordering::Relaxed) { "miss" } else { "hit" };
        self.metrics.get_or_create(&CacheLabels { cache: "evidence", result }).inc();
        let document = found.map_err(|e| EvidenceError::clone(&e))?;
        // Cached under a larger cap, it must still fit this entry's.
        if document.bytes > decl.max_bytes {
            let (sha256, limit) = (descriptor.sha256, decl.max_bytes);
            return Err(EvidenceError::Oversize { store, sha256, limit });
        }
        Ok(Item { descriptor, document, store })
    }

    /// The bytes of `sha256` from the entry's store, checked against it.
    async fn fetch(
        &self,
        decl: &EvidenceDecl,
        sha256: &str,
        credentials: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> Result<Vec<u8>, EvidenceError> {
        match &decl.store {
            Store::Https { template, host } => {
                self.https.get(template, host, sha256, decl.max_bytes, bytes, deadline).await
            }
            Store::Oci(repository) => {
                let digest = Digest::parse(&format!("sha256:{sha256}"))
                    .map_err(|_| EvidenceError::NoDigest { descriptor: format!("sha256 {sha256}") })?;
                let creds = credentials.for_host(repository.registry());
                let blob = self.registry.blob(repository, &digest, &creds, decl.max_bytes, bytes, deadline).await;
                blob.map(|b| b.to_vec()).map_err(|e| oci_error(e, &decl.store.key(), sha256))
            }
        }
    }
}

/// A registry failure as the evidence reason it is: absent, altered or too large; any other keeps the registry's.
fn oci_error(e: RegistryError, store: &str, sha256: &str) -> EvidenceError {
    let (store, sha256) = (store.to_owned(), sha256.to_owned());
    match e {
        RegistryError::NotFound { .. } => EvidenceError::Missing { store, sha256 },
        RegistryError::DigestMismatch { actual, .. } => {
            let actual = actual.strip_prefix("sha256:").unwrap_or(&actual).to_owned();
            EvidenceError::DigestMismatch { store, expected: sha256, actual }
        }
        RegistryError::TooLarge { limit, .. } => EvidenceError::Oversize { store, sha256, limit },
        other => EvidenceError::Registry(other),
    }
}

#[async_trait::async_trait]
impl EvidenceFetch for Fetcher {
    async fn fetch(
        &self,
        image: &ImageRef,
        found: &ImageEvidence,
        policies: &[&Arc<Policy>],
        authorities: &Authorities,
        credentials: &HostCredentials,
        bytes: &Budget,
        deadline: Instant,
    ) -> ByPolicy {
        // A policy whose requirements are not met is denied for them; nothing it would select is fetched.
        let inputs: Vec<(&Arc<Policy>, ImageInput)> = policies
            .iter()
            .filter_map(|p| Some((*p, crate::check::verified_input(p, image, found, authorities)?)))
            .collect();
        let entries = inputs.iter().flat_map(|(policy, input)| {
            policy.evidence.iter().map(move |decl| async move {
                let result = self.entry(decl, input, credentials, bytes, deadline).await;
                (policy.name.clone(), decl.name.clone(), result)
            })
        });
        let mut out: BTreeMap<String, Found> = BTreeMap::new();
        for (policy, name, result) in futures::future::join_all(entries).await {
            out.entry(policy).or_default().insert(name, result);
        }
        out.into_iter().map(|(policy, found)| (policy, Arc::new(found))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_failures_of_an_oci_store_become_evidence_reasons() {
        let r = || "r.example".to_owned();
        let table = [
            (RegistryError::NotFound { registry: r(), what: "blob".into() }, "evidence-missing"),
            (
                RegistryError::DigestMismatch {
                    registry: r(),
                    what: "blob".into(),
                    expected: "sha256:aa".into(),
                    actual: "sha256:bb".into(),
                },
                "evidence-digest-mismatch",
            ),
            (RegistryError::TooLarge { registry: r(), what: "blob".into(), limit: 9 }, "evidence-oversize"),
            (
                RegistryError::Unauthorized { registry: r(), repository: "e".into(), detail: "401".into() },
                "registry-unauthorized",
            ),
            (RegistryError::TimedOut { registry: r(), what: "blob".into() }, "registry-timed-out"),
        ];
        for (error, code) in table {
            let mapped = oci_error(error.clone(), "oci://r.example/e", "aa");
            assert_eq!(mapped.code(), code, "{error}");
        }
        let mismatch = oci_error(
            RegistryError::DigestMismatch {
                registry: r(),
                what: "b".into(),
                expected: "sha256:aa".into(),
                actual: "sha256:bb".into(),
            },
            "oci://r.example/e",
            "aa",
        );
        assert!(mismatch.to_string().contains("bytes for sha256:aa that hash to sha256:bb"), "{mismatch}");
    }
}
