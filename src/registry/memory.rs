//! An in-memory [`Registry`] for tests: tags, manifests and artifacts held in maps, every call counted, and any call
//! made to fail with a chosen [`RegistryError`]. No network; compiled only for tests (`--features test-registry`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::budget::Pool;
use super::{Budget, Credentials, Head, PlatformManifest, Registry, RegistryConfig, RegistryError, Resolved};
use crate::artifact::Artifacts;
use crate::images::{Digest, ImageRef};

/// A method of the [`Registry`] trait, for counting calls and arranging failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Budget,
    Head,
    Manifest,
    Artifacts,
    Blob,
    Content,
}

/// One call as it was made: the method, the image's `registry/repository`, and the digest asked about (none for
/// `budget`, and for `head` the digest of a digest reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub call: Call,
    pub name: Option<String>,
    pub digest: Option<Digest>,
}

/// A failure to answer: every call of `call` (for the image `name`, or any image) fails with `error`.
#[derive(Debug, Clone)]
struct Failure {
    call: Call,
    name: Option<String>,
    error: RegistryError,
}

#[derive(Debug, Default)]
struct State {
    /// (`registry/repository`, tag) -> digest.
    tags: HashMap<(String, String), Digest>,
    /// (`registry/repository`, digest) -> what the manifest is.
    manifests: HashMap<(String, Digest), Resolved>,
    /// (`registry/repository`, digest) -> the signature, attestation and bundle layers stored for it.
    artifacts: HashMap<(String, Digest), Artifacts>,
    /// (`registry/repository`, digest) -> blob bytes.
    blobs: HashMap<(String, Digest), bytes::Bytes>,
    /// (`registry/repository`, digest) -> the exact bytes of a manifest or blob, for `content`.
    contents: HashMap<(String, Digest), bytes::Bytes>,
    calls: Vec<Made>,
    failures: Vec<Failure>,
}

/// A registry held in memory. Shared as `Arc<dyn Registry>` and still arranged through `&self`.
pub struct MemoryRegistry {
    config: RegistryConfig,
    pool: Pool,
    state: Mutex<State>,
    /// While held ([`MemoryRegistry::hold_artifacts`]), artifact lookups wait on it until it is closed.
    artifacts_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// `registry/repository` of a reference as written, normalised as [`ImageRef::name`] does.
fn name_of(reference: &str) -> String {
    ImageRef::parse(reference).map(|i| i.name()).unwrap_or_else(|_| reference.to_owned())
}

impl MemoryRegistry {
    /// An empty registry with the default byte budgets.
    pub fn new() -> Self {
        let config = RegistryConfig::default();
        let pool = Pool::new(config.max_bytes_in_flight);
        Self { config, pool, state: Mutex::new(State::default()), artifacts_gate: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores a single-platform image manifest `digest` of `media_type` in `repository`.
    pub fn put_manifest(&self, repository: &str, digest: &Digest, media_type: &str) {
        let resolved = Resolved { digest: digest.clone(), media_type: media_type.to_owned(), platforms: Vec::new() };
        self.state().manifests.insert((name_of(repository), digest.clone()), resolved);
    }

    /// Stores an OCI image index `digest` listing `platforms` (`(digest, os, architecture)`) in `repository`.
    pub fn put_index(&self, repository: &str, digest: &Digest, platforms: &[(Digest, &str, &str)]) {
        let platforms = platforms
            .iter()
            .map(|(d, os, arch)| PlatformManifest {
                digest: d.clone(),
                media_type: MANIFEST.to_owned(),
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            })
            .collect();
        let resolved = Resolved { digest: digest.clone(), media_type: super::INDEX_TYPES[0].to_owned(), platforms };
        self.state().manifests.insert((name_of(repository), digest.clone()), resolved);
    }

    /// Points `repository:tag` at `digest`.
    pub fn tag(&self, repository: &str, tag: &str, digest: &Digest) {
        self.state().tags.insert((name_of(repository), tag.to_owned()), digest.clone());
    }

    /// Stores the artifacts found for `digest` in `repository` (replacing any stored before).
    pub fn put_artifacts(&self, repository: &str, digest: &Digest, artifacts: Artifacts) {
        self.state().artifacts.insert((name_of(repository), digest.clone()), artifacts);
    }

    /// Stores `bytes` as a blob of `repository`; returns its digest.
    pub fn put_blob(&self, repository: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        self.state().blobs.insert((name_of(repository), digest.clone()), bytes::Bytes::copy_from_slice(bytes));
        digest
    }

    /// Stores `bytes` (a manifest or a blob) in `repository` under their sha256 digest, which it returns.
    pub fn put_content(&self, repository: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        self.state().contents.insert((name_of(repository), digest.clone()), bytes::Bytes::copy_from_slice(bytes));
        digest
    }

    /// Makes every later `call` (for `repository` only, when given) fail with `error`.
    pub fn fail(&self, call: Call, repository: Option<&str>, error: RegistryError) {
        self.state().failures.push(Failure { call, name: repository.map(name_of), error });
    }

    /// Makes artifact lookups wait, as on a registry that does not answer, until [`MemoryRegistry::release`].
    pub fn hold_artifacts(&self) {
        *self.artifacts_gate.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets every held artifact lookup go on, and later ones pass.
    pub fn release(&self) {
        if let Some(gate) = self.artifacts_gate.lock().unwrap_or_else(PoisonError::into_inner).take() {
            gate.close();
        }
    }

    /// Answers again every call arranged to fail.
    pub fn heal(&self) {
        self.state().failures.clear();
    }

    /// How many times `call` was made.
    pub fn calls(&self, call: Call) -> usize {
        self.state().calls.iter().filter(|m| m.call == call).count()
    }

    /// How many times `call` was made about `digest`.
    pub fn calls_for(&self, call: Call, digest: &Digest) -> usize {
        self.state().calls.iter().filter(|m| m.call == call && m.digest.as_ref() == Some(digest)).count()
    }

    /// Every call made, in order.
    pub fn made(&self) -> Vec<Made> {
        self.state().calls.clone()
    }

    /// Records a call, then the failure arranged for it, if any.
    fn record(&self, call: Call, image: Option<&ImageRef>, digest: Option<&Digest>) -> Result<(), RegistryError> {
        let name = image.map(ImageRef::name);
        let mut state = self.state();
        state.calls.push(Made { call, name: name.clone(), digest: digest.cloned() });
        let failure = state.failures.iter().find(|f| f.call == call && (f.name.is_none() || f.name == name)).cloned();
        failure.map_or(Ok(()), |f| Err(f.error))
    }

    fn not_found(image: &ImageRef, what: String) -> RegistryError {
        RegistryError::NotFound { registry: image.registry().to_owned(), what }
    }
}

/// The media type of a single-platform OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    fn budget(&self) -> Budget {
        // `budget` cannot fail; a failure arranged for it is ignored, the call still counted.
        let _ = self.record(Call::Budget, None, None);
        Budget::review(&self.config, &self.pool)
    }

    /// A digest reference answers its digest with no media type (as the real client, which asks nothing); a tag
    /// answers the digest it points at with the stored manifest's media type.
    async fn head(
        &self,
        image: &ImageRef,
        _creds: &Credentials,
        _budget: &Budget,
        _deadline: Instant,
    ) -> Result<Head, RegistryError> {
        self.record(Call::Head, Some(image), image.digest())?;
        if let Some(digest) = image.digest() {
            return Ok(Head { digest: digest.clone(), media_type: None });
        }
        let tag = image.tag().unwrap_or("latest");
        let state = self.state();
        let digest = state
            .tags
            .get(&(image.name(), tag.to_owned()))
            .cloned()
            .ok_or_else(|| Self::not_found(image, format!("manifest {}:{tag}", image.repository())))?;
        let media_type = state.manifests.get(&(image.name(), digest.clone())).map(|m| m.media_type.clone());
        Ok(Head { digest, media_type })
    }

    async fn manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
        _creds: &Credentials,
        _budget: &Budget,
        _deadline: Instant,
    ) -> Result<Resolved, RegistryError> {
        self.record(Call::Manifest, Some(image), Some(digest))?;
        self.state()
            .manifests
            .get(&(image.name(), digest.clone()))
            .cloned()
            .ok_or_else(|| Self::not_found(image, format!("manifest {}@{digest}", image.repository())))
    }

    /// No artifacts stored is an empty value, as from a real registry. Only the layers of the places `wanted` names
    /// are given (without `wanted.attestations`, none of the `.att` tag), as the real client reads no other.
    async fn artifacts(
        &self,
        image: &ImageRef,
        digest: &Digest,
        _creds: &Credentials,
        wanted: super::Wanted,
        _budget: &Budget,
        _deadline: Instant,
    ) -> Result<Artifacts, RegistryError> {
        self.record(Call::Artifacts, Some(image), Some(digest))?;
        let gate = self.artifacts_gate.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(gate) = gate {
            // Closed on release: the wait ends with an error, which is the signal to go on.
            let _ = gate.acquire().await;
        }
        let mut found = self.state().artifacts.get(&(image.name(), digest.clone())).cloned().unwrap_or_default();
        found.retain(|origin| wanted.keeps(origin));
        Ok(found)
    }

    /// The blob as stored, refused past `max_bytes` like the real client.
    async fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        _creds: &Credentials,
        max_bytes: u64,
        _budget: &Budget,
        _deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError> {
        self.record(Call::Blob, Some(image), Some(digest))?;
        let what = format!("blob {}@{digest}", image.repository());
        let found = self.state().blobs.get(&(image.name(), digest.clone())).cloned();
        match found {
            None => Err(Self::not_found(image, what)),
            Some(b) if b.len() as u64 > max_bytes => {
                Err(RegistryError::TooLarge { registry: image.registry().to_owned(), what, limit: max_bytes })
            }
            Some(b) => Ok(b),
        }
    }

    /// What `put_content` stored, or `TooLarge` past `max_bytes` (the real client cuts the read there).
    async fn content(
        &self,
        image: &ImageRef,
        digest: &Digest,
        _kind: super::ContentKind,
        max_bytes: u64,
        _creds: &Credentials,
        _budget: &Budget,
        _deadline: Instant,
    ) -> Result<bytes::Bytes, RegistryError> {
        self.record(Call::Content, Some(image), Some(digest))?;
        let what = format!("{}@{digest}", image.repository());
        let found = self.state().contents.get(&(image.name(), digest.clone())).cloned();
        match found {
            Some(bytes) if bytes.len() as u64 > max_bytes => {
                Err(RegistryError::TooLarge { registry: image.registry().to_owned(), what, limit: max_bytes })
            }
            Some(bytes) => Ok(bytes),
            None => Err(Self::not_found(image, what)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[tokio::test]
    async fn answers_what_it_holds_counts_calls_and_fails_on_demand() {
        let r = MemoryRegistry::new();
        let (index, amd, arm) = (Digest::sha256_of(b"index"), Digest::sha256_of(b"amd"), Digest::sha256_of(b"arm"));
        r.put_index(
            "registry.example.com/team/app",
            &index,
            &[(amd.clone(), "linux", "amd64"), (arm, "linux", "arm64")],
        );
        r.tag("registry.example.com/team/app", "1", &index);
        let (creds, budget, deadline) = (Credentials::Anonymous, r.budget(), Instant::now());
        let tagged = image("registry.example.com/team/app:1");
        let resolved = r.resolve(&tagged, &creds, &budget, deadline).await.unwrap();
        assert_eq!((resolved.digest.clone(), resolved.platforms.len()), (index.clone(), 2));
        assert!(resolved.is_index());
        let pinned = image(&format!("registry.example.com/team/app@{amd}"));
        assert_eq!(
            r.head(&pinned, &creds, &budget, deadline).await.unwrap(),
            Head { digest: amd.clone(), media_type: None }
        );
        let missing = r.head(&image("registry.example.com/team/app:2"), &creds, &budget, deadline).await;
        assert_eq!(missing.unwrap_err().code(), "registry-not-found");
        assert!(
            r.artifacts(&tagged, &amd, &creds, crate::registry::Wanted::ALL, &budget, deadline)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!((r.calls(Call::Head), r.calls(Call::Manifest), r.calls(Call::Artifacts)), (3, 1, 1));
        assert_eq!((r.calls(Call::Budget), r.calls_for(Call::Head, &amd)), (1, 1));

        let refused = RegistryError::Unauthorized {
            registry: "registry.example.com".into(),
            repository: "team/app".into(),
            detail: "401".into(),
        };
        r.fail(Call::Artifacts, Some("registry.example.com/team/app"), refused.clone());
        let other = image("registry.example.com/team/other:1");
        assert_eq!(
            r.artifacts(&tagged, &amd, &creds, crate::registry::Wanted::ALL, &budget, deadline).await,
            Err(refused)
        );
        assert!(
            r.artifacts(&other, &amd, &creds, crate::registry::Wanted::ALL, &budget, deadline).await.is_ok(),
            "only that repository fails"
        );
        r.heal();
        assert!(r.artifacts(&tagged, &amd, &creds, crate::registry::Wanted::ALL, &budget, deadline).await.is_ok());
        assert_eq!(r.calls(Call::Artifacts), 4);
    }
}
