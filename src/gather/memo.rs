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

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hashbrown::{Equivalent, HashMap};

use crate::images::{Digest, ImageRef};
use crate::registry::{Credentials, HostCredentials, Wanted};
use crate::verify::Authority;

use super::{ImageEvidence, Source, review_credentials};

/// Everything an image's gathered evidence depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    /// `registry/repository@digest` (its text shared with the references that name it).
    pub image: ImageRef,
    /// Whether an index's platform manifests were read (a release list's never are).
    pub platforms: bool,
    pub sources: Vec<SourceKey>,
}

/// One signature source of an image's governing policies, as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SourceKey {
    /// A policy's signature repository (one without pull secrets); `None`: the image's own.
    pub repository: Option<ImageRef>,
    pub credentials: Credentials,
    pub wanted: Wanted,
    /// Cache keys of every authority reading the source, and of those requiring every platform.
    pub authorities: Vec<Arc<str>>,
    pub every_platform: Vec<Arc<str>>,
}

/// A [`Key`] as a review has it, borrowed from its plan: what a warm review looks up without building the key.
pub(super) struct Lookup<'a> {
    image: &'a ImageRef,
    digest: &'a Digest,
    platforms: bool,
    sources: &'a [Source<'a>],
    /// The credentials each source is read with.
    credentials: Vec<Credentials>,
}

impl<'a> Lookup<'a> {
    /// The key of `image` at `digest` read from `sources`; `None` when a source is read with pull secrets from the
    /// cluster (those credentials are known only by reading them).
    pub fn new(
        image: &'a ImageRef,
        digest: &'a Digest,
        platforms: bool,
        review: &HostCredentials,
        sources: &'a [Source<'a>],
    ) -> Option<Self> {
        let credentials =
            sources.iter().map(|source| review_credentials(image, source, review)).collect::<Option<_>>()?;
        Some(Self { image, digest, platforms, sources, credentials })
    }

    /// The key this looks up, owned, to keep evidence under.
    pub fn key(&self) -> Key {
        let cache_keys = |authorities: &[Arc<Authority>]| authorities.iter().map(|a| a.cache_key()).collect();
        let sources = self.sources.iter().zip(&self.credentials).map(|(source, credentials)| SourceKey {
            repository: source.repository.map(|r| r.repository().clone()),
            credentials: credentials.clone(),
            wanted: source.wanted,
            authorities: cache_keys(&source.authorities),
            every_platform: cache_keys(&source.every_platform),
        });
        Key { image: self.image.at_digest(self.digest.clone()), platforms: self.platforms, sources: sources.collect() }
    }
}

// A key and its lookup hash alike: the image by name and digest (whatever tag it was written with) and whether
// platforms were read. Sources are compared, not hashed: the keys of one image differ in them only by the policies
// and credentials configured for it, a handful, and hashing their authorities' long cache keys would cost a warm
// review more than comparing them in that handful.
fn hash_image<H: Hasher>(image: &ImageRef, digest: Option<&Digest>, platforms: bool, state: &mut H) {
    state.write_u64(image.name_hash());
    digest.map(Digest::as_str).hash(state);
    platforms.hash(state);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_image(&self.image, self.image.digest(), self.platforms, state);
    }
}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_image(self.image, Some(self.digest), self.platforms, state);
    }
}

fn cache_key(authority: &Arc<Authority>) -> &str {
    authority.cache_key_str()
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        let same = |keys: &[Arc<str>], authorities: &[Arc<Authority>]| {
            keys.len() == authorities.len() && keys.iter().zip(authorities).all(|(k, a)| **k == *cache_key(a))
        };
        key.platforms == self.platforms
            && key.image.name_str() == self.image.name_str()
            && key.image.digest() == Some(self.digest)
            && key.sources.len() == self.sources.len()
            && key.sources.iter().zip(self.sources).zip(&self.credentials).all(|((k, s), credentials)| {
                k.repository.as_ref() == s.repository.map(|r| r.repository())
                    && k.credentials == *credentials
                    && k.wanted == s.wanted
                    && same(&k.authorities, &s.authorities)
                    && same(&k.every_platform, &s.every_platform)
            })
    }
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

    /// The evidence under `key` (a [`Key`] or its [`Lookup`]), unless it has expired by `now`.
    pub fn get<Q: Hash + Equivalent<Key>>(&self, key: &Q, now: Instant) -> Option<Arc<ImageEvidence>> {
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
                wanted: Wanted { storage: crate::artifact::Storage::BOTH, attestations: false },
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
            lookups: Default::default(),
            evidence: Default::default(),
            coverage: Coverage::default(),
            judged: Default::default(),
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
        wants_more.sources[0].wanted.attestations = true;
        assert!(memo.get(&wants_more, now).is_none(), "a source asked for more misses");
        for storage in [(true, false), (false, true)] {
            let mut elsewhere = key(1, "chains|keys|sha256:aa");
            elsewhere.sources[0].wanted.storage = crate::artifact::Storage { tags: storage.0, referrers: storage.1 };
            assert!(memo.get(&elsewhere, now).is_none(), "a source read in fewer places misses: {storage:?}");
        }
        let mut with_platforms = key(1, "chains|keys|sha256:aa");
        with_platforms.platforms = true;
        assert!(memo.get(&with_platforms, now).is_none(), "platforms read or not are two answers");
        assert!(memo.get(&key(1, "chains|keys|sha256:aa"), now + Duration::from_secs(5)).is_none(), "expired");
    }

    #[test]
    fn a_review_finds_by_its_borrowed_lookup_exactly_the_entry_of_the_key_it_would_build() {
        use std::hash::BuildHasher as _;
        let (a, b) = (crate::verify::fixtures::Key::new(), crate::verify::fixtures::Key::new());
        let (a, b) = (Arc::new(a.authority("a")), Arc::new(b.authority("b")));
        let source = |authorities: &[&Arc<Authority>], every: &[&Arc<Authority>], attestations: bool| Source {
            repository: None,
            authorities: authorities.iter().map(|x| Arc::clone(x)).collect(),
            every_platform: every.iter().map(|x| Arc::clone(x)).collect(),
            wanted: Wanted { storage: crate::artifact::Storage::BOTH, attestations },
        };
        let tags_only =
            Wanted { storage: crate::artifact::Storage { tags: true, referrers: false }, attestations: false };
        let sources = [
            vec![],
            vec![source(&[&a], &[], false)],
            vec![source(&[&a, &b], &[], false)],
            vec![source(&[&b, &a], &[], false)],
            vec![source(&[&a], &[&a], false)],
            vec![source(&[&a], &[], true)],
            vec![source(&[&a], &[], false), source(&[&b], &[], false)],
            vec![Source { wanted: tags_only, ..source(&[&a], &[], false) }],
        ];
        let mut logged_in = HostCredentials::default();
        logged_in.insert("registry.example", Credentials::basic("u", "p"));
        let reviews = [HostCredentials::default(), logged_in];
        let (d1, d2) = (digest(1), digest(2));
        let images = [
            (format!("registry.example/team/app@{d1}"), &d1),
            (format!("REGISTRY.example/team/app:1@{d1}"), &d1),
            (format!("registry.example/team/app@{d2}"), &d2),
            (format!("registry.example/team/other@{d1}"), &d1),
            (format!("elsewhere.example/team/app@{d1}"), &d1),
        ];
        let images: Vec<(ImageRef, &Digest)> = images.iter().map(|(i, d)| (ImageRef::parse(i).unwrap(), *d)).collect();
        let memo = Memo::new(10_000, 1 << 30);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut keys: Vec<Key> = Vec::new();
        let mut n = 0u8;
        for (image, digest) in &images {
            for sources in &sources {
                for review in &reviews {
                    for platforms in [false, true] {
                        let key = Lookup::new(image, digest, platforms, review, sources).unwrap().key();
                        if !keys.contains(&key) {
                            keys.push(key.clone());
                        }
                        n = n.wrapping_add(1);
                        memo.insert(key, evidence(n, 1), later, now);
                    }
                }
            }
        }
        assert_eq!(memo.len(), keys.len(), "each distinct key has its entry");
        let hasher = foldhash::quality::RandomState::default();
        for (image, digest) in &images {
            for sources in &sources {
                for review in &reviews {
                    for platforms in [false, true] {
                        let key = Lookup::new(image, digest, platforms, review, sources).unwrap().key();
                        let lookup = Lookup::new(image, digest, platforms, review, sources).unwrap();
                        assert_eq!(hasher.hash_one(&key), hasher.hash_one(&lookup), "{image} {platforms}");
                        let (by_key, by_lookup) = (memo.get(&key, now).unwrap(), memo.get(&lookup, now).unwrap());
                        assert!(Arc::ptr_eq(&by_key, &by_lookup), "{image} {platforms}");
                        for other in keys.iter().filter(|k| **k != key) {
                            assert!(!lookup.equivalent(other), "{image} {platforms} is not {other:?}");
                        }
                    }
                }
            }
        }
        // The tag and the host's spelling are no part of the key; the digest, repository and registry are, and the
        // credentials where a source is read with them: three images on the logged-in host, each with 7 sources
        // read with or without the login and with none, by platforms or not (3 × 15 × 2), and one elsewhere, read
        // anonymously by both reviews (8 × 2).
        assert_eq!(keys.len(), 3 * 15 * 2 + 8 * 2);
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
