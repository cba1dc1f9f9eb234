//! The evidence last gathered for an image, by everything it was computed from, so that a warm review reads an
//! image's evidence in one lookup rather than one per cache it was assembled from.
//!
//! An entry is what [`super::Gatherer`] put together from its caches (the artifacts found at each signature source
//! and what each authority verified of them), keyed by the repository and digest, and per source by where it was
//! read, with which credentials, what was asked and which authorities (by cache key, so a rotated key misses). It
//! lives no longer than the earliest of the artifacts it was built from (`artifactsTtl`, or `missingTtl` for an
//! absence), so it never answers what those caches would no longer answer. Bounded by a quarter of `cache.maxEntries`
//! entries (an entry holds an image's whole evidence, about 2 KiB, where the caches hold its parts anyway) and
//! `cache.maxArtifactBytes` of the verifications it holds: when full, expired entries go first, then all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::images::ImageRef;
use crate::registry::{Credentials, Wanted};

use super::ImageEvidence;

/// Everything an image's gathered evidence depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// `registry/repository@digest` (its text shared with the references that name it).
    pub image: ImageRef,
    /// Whether an index's platform manifests were read (a release list's never are).
    pub platforms: bool,
    pub sources: Vec<SourceKey>,
}

/// One signature source of an image's governing policies, as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SourceKey {
    /// A policy's signature repository (one without pull secrets); `None`: the image's own.
    pub repository: Option<ImageRef>,
    pub credentials: Credentials,
    pub wanted: Wanted,
    /// Cache keys of every authority reading the source, and of those requiring every platform.
    pub authorities: Vec<Arc<str>>,
    pub every_platform: Vec<Arc<str>>,
}

struct Entry {
    expires: Instant,
    weight: u64,
    evidence: Arc<ImageEvidence>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry, foldhash::quality::RandomState>,
    weight: u64,
}

pub(super) struct Memo {
    entries: Mutex<Entries>,
    max_entries: usize,
    max_weight: u64,
}

impl Memo {
    /// A memo of at most `max_entries` entries, holding at most `max_weight` bytes of artifacts' verifications.
    pub fn new(max_entries: u64, max_weight: u64) -> Self {
        let max_entries = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self { entries: Mutex::default(), max_entries, max_weight }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The evidence under `key`, unless it has expired by `now`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<ImageEvidence>> {
        let entries = self.lock();
        let entry = entries.map.get(key)?;
        (now < entry.expires).then(|| entry.evidence.clone())
    }

    /// Keeps `evidence` under `key` until `expires`; when that would pass a bound, expired entries are dropped first,
    /// then every entry.
    pub fn insert(&self, key: Key, evidence: Arc<ImageEvidence>, expires: Instant, now: Instant) {
        let weight = weight(&evidence);
        if self.max_entries == 0 || weight > self.max_weight {
            return;
        }
        let mut entries = self.lock();
        let full = |e: &Entries| e.map.len() >= self.max_entries || e.weight + weight > self.max_weight;
        if full(&entries) {
            entries.map.retain(|_, e| now < e.expires);
            entries.weight = entries.map.values().map(|e| e.weight).sum();
        }
        if full(&entries) {
            entries.map.clear();
            entries.weight = 0;
        }
        if let Some(old) = entries.map.insert(key, Entry { expires, weight, evidence }) {
            entries.weight -= old.weight;
        }
        entries.weight += weight;
    }

    #[cfg(test)]
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.weight = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// The bytes of artifacts behind what `evidence` verified (a verification's weight in its own cache).
fn weight(evidence: &ImageEvidence) -> u64 {
    let platforms = evidence.platforms_verified.iter().flatten().flat_map(|(_, v)| v.values());
    evidence.verified.values().chain(platforms).map(|v| v.bytes).sum::<u64>().max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gather::{Coverage, Verification};
    use crate::verify::{AttestationCheck, SignatureCheck};

    fn digest(n: u8) -> crate::images::Digest {
        crate::images::Digest::sha256_of(&[n])
    }

    fn key(n: u8, authority: &str) -> Key {
        Key {
            image: ImageRef::parse("registry.example/team/app").unwrap().at_digest(digest(n)),
            platforms: false,
            sources: vec![SourceKey {
                repository: None,
                credentials: Credentials::Anonymous,
                wanted: Wanted { attestations: false },
                authorities: vec![authority.into()],
                every_platform: Vec::new(),
            }],
        }
    }

    fn evidence(n: u8, bytes: u64) -> Arc<ImageEvidence> {
        let signatures = SignatureCheck { digest: digest(n), verified: Vec::new(), rejected: Vec::new() };
        let attestations = AttestationCheck { digest: digest(n), verified: Vec::new(), rejected: Vec::new() };
        let verification = Verification { bytes, signatures, attestations };
        Arc::new(ImageEvidence {
            digest: digest(n),
            platforms: Vec::new(),
            verified: [("a".into(), Arc::new(verification))].into_iter().collect(),
            platforms_verified: None,
            lookups: HashMap::new(),
            evidence: Default::default(),
            coverage: Coverage::default(),
        })
    }

    #[test]
    fn an_entry_answers_its_own_key_until_it_expires_and_no_other() {
        let memo = Memo::new(10, 1 << 20);
        let now = Instant::now();
        memo.insert(key(1, "chains|keys|sha256:aa"), evidence(1, 10), now + Duration::from_secs(5), now);
        let found = memo.get(&key(1, "chains|keys|sha256:aa"), now).unwrap();
        assert_eq!(found.digest, digest(1));
        assert!(memo.get(&key(1, "chains|keys|sha256:bb"), now).is_none(), "a rotated key misses");
        assert!(memo.get(&key(2, "chains|keys|sha256:aa"), now).is_none(), "another digest misses");
        let mut other_creds = key(1, "chains|keys|sha256:aa");
        other_creds.sources[0].credentials = Credentials::Bearer("t".into());
        assert!(memo.get(&other_creds, now).is_none(), "other credentials miss");
        let mut wants_more = key(1, "chains|keys|sha256:aa");
        wants_more.sources[0].wanted = Wanted { attestations: true };
        assert!(memo.get(&wants_more, now).is_none(), "a source asked for more misses");
        let mut with_platforms = key(1, "chains|keys|sha256:aa");
        with_platforms.platforms = true;
        assert!(memo.get(&with_platforms, now).is_none(), "platforms read or not are two answers");
        assert!(memo.get(&key(1, "chains|keys|sha256:aa"), now + Duration::from_secs(5)).is_none(), "expired");
    }

    #[test]
    fn entries_and_bytes_are_bounded_expired_entries_going_first() {
        let memo = Memo::new(3, 100);
        let now = Instant::now();
        let (soon, later) = (now + Duration::from_secs(1), now + Duration::from_secs(60));
        memo.insert(key(1, "a"), evidence(1, 10), soon, now);
        memo.insert(key(2, "a"), evidence(2, 10), later, now);
        memo.insert(key(3, "a"), evidence(3, 10), later, now);
        assert_eq!(memo.len(), 3);
        // Full: the expired entry makes room, the live ones stay.
        let after = now + Duration::from_secs(2);
        memo.insert(key(4, "a"), evidence(4, 10), later, after);
        assert_eq!(memo.len(), 3);
        assert!(memo.get(&key(1, "a"), now).is_none());
        assert!(memo.get(&key(2, "a"), after).is_some());
        // Nothing expired: everything goes.
        memo.insert(key(5, "a"), evidence(5, 10), later, after);
        assert_eq!(memo.len(), 1);
        // Bytes: 60 + 60 > 100.
        memo.insert(key(6, "a"), evidence(6, 60), later, after);
        assert_eq!(memo.len(), 2);
        memo.insert(key(7, "a"), evidence(7, 60), later, after);
        assert_eq!(memo.len(), 1, "over the byte bound");
        // An entry heavier than the bound is never kept.
        memo.insert(key(8, "a"), evidence(8, 101), later, after);
        assert!(memo.get(&key(8, "a"), after).is_none());
        assert!(memo.get(&key(7, "a"), after).is_some());
    }
}
