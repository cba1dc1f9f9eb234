//! Key sources named by policies: `k8s://NS/SECRET[/KEY]`, file paths and inline PEM, parsed once when loaded or
//! changed, fingerprinted, and turned into never-empty [`KeySet`]s. Errors name the source (they become denials).

mod kubernetes;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use kubernetes::{SecretWatch, fetch_secret_key};

use crate::verify::{KeyError, KeySet, PublicKey};

/// cosign's default data key in a key Secret.
pub const DEFAULT_SECRET_KEY: &str = "cosign.pub";

/// Where a public key comes from, as written in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// `k8s://NAMESPACE/SECRET[/KEY]`: the data key `KEY` (default `cosign.pub`) of a Secret.
    Secret(SecretRef),
    /// A PEM file on disk (re-parsed when its modification time or size changes).
    File(PathBuf),
    /// PEM given inline; parsed when the reference is parsed.
    Inline(PublicKey),
}

/// One data key of one Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k8s://{}/{}/{}", self.namespace, self.name, self.key)
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(s) => s.fmt(f),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Inline(k) => write!(f, "inline {k}"),
        }
    }
}

/// Why a key reference gave no key. Each names the reference, so the denial says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("bad key reference {0:?}: want k8s://NAMESPACE/SECRET[/KEY], a file path, or inline PEM")]
    BadRef(String),
    #[error("Secret {namespace}/{name} not found (key {key} of {reference})", namespace = .0.namespace, name = .0.name, key = .0.key, reference = .0)]
    SecretNotFound(SecretRef),
    #[error("Secret {}/{} has no data key {:?}", .0.namespace, .0.name, .0.key)]
    MissingDataKey(SecretRef),
    #[error("{source_ref}: key does not parse: {error}")]
    Unparseable {
        source_ref: String,
        #[source]
        error: KeyError,
    },
    #[error("{source_ref}: cannot read: {error}")]
    Io { source_ref: String, error: String },
    #[error("{0}: not loaded yet (the Secret watch has not synced)")]
    NotLoaded(String),
    #[error("{0}: Kubernetes Secrets are named but no Kubernetes client is configured")]
    NoClient(String),
    #[error("{reference}: Kubernetes API error: {error}")]
    Api { reference: String, error: String },
}

impl KeysError {
    /// A stable label for audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRef(_) => "bad-key-ref",
            Self::SecretNotFound(_) => "key-secret-not-found",
            Self::MissingDataKey(_) => "key-missing-data-key",
            Self::Unparseable { .. } => "key-unparseable",
            Self::Io { .. } => "key-unreadable",
            Self::NotLoaded(_) => "key-not-loaded",
            Self::NoClient(_) => "key-no-client",
            Self::Api { .. } => "key-api-error",
        }
    }
}

impl KeyRef {
    /// Parses a reference. Inline PEM is parsed (and rejected if it is not a public key) right here.
    pub fn parse(s: &str) -> Result<Self, KeysError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("k8s://") {
            let parts: Vec<&str> = rest.split('/').collect();
            let (namespace, name, key) = match parts.as_slice() {
                [ns, name] => (*ns, *name, DEFAULT_SECRET_KEY),
                [ns, name, key] => (*ns, *name, *key),
                _ => return Err(KeysError::BadRef(s.to_owned())),
            };
            if [namespace, name, key].iter().any(|p| p.is_empty()) {
                return Err(KeysError::BadRef(s.to_owned()));
            }
            let secret = SecretRef { namespace: namespace.into(), name: name.into(), key: key.into() };
            return Ok(Self::Secret(secret));
        }
        if s.contains("-----BEGIN") {
            let key = PublicKey::from_pem(s.as_bytes())
                .map_err(|error| KeysError::Unparseable { source_ref: "inline PEM".into(), error })?;
            return Ok(Self::Inline(key));
        }
        if s.is_empty() || s.contains("://") {
            return Err(KeysError::BadRef(s.to_owned()));
        }
        Ok(Self::File(PathBuf::from(s)))
    }
}

/// Where a watched Secret key stands, for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// No answer from the API yet.
    Pending,
    /// The key parsed.
    Loaded,
    /// The Secret, or its data key, does not exist.
    Missing,
    /// The key does not parse, or the API refused or failed.
    Error,
}

impl KeyState {
    /// Every state, in label order.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Loaded, Self::Missing, Self::Error];

    /// The state of a watch that last gave `loaded` (None: nothing yet).
    pub fn of(loaded: Option<&Result<PublicKey, KeysError>>) -> Self {
        match loaded {
            None => Self::Pending,
            Some(Ok(_)) => Self::Loaded,
            Some(Err(KeysError::SecretNotFound(_) | KeysError::MissingDataKey(_))) => Self::Missing,
            Some(Err(_)) => Self::Error,
        }
    }

    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Loaded => "loaded",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }
}

/// A key file as last read: when its metadata was last looked at, its modification time and length then, and what
/// it parsed to.
struct FileEntry {
    checked: Instant,
    modified: Option<SystemTime>,
    len: u64,
    parsed: Result<PublicKey, KeysError>,
}

/// How long a key file's parse is used before its metadata is looked at again: a rotated file is read within this,
/// and a review does not cost a `stat` system call.
const FILE_RECHECK: Duration = Duration::from_secs(1);

/// Resolves key references to parsed keys: Secrets from their watches, files from a parse cache.
#[derive(Clone, Default)]
pub struct KeyStore {
    secrets: Option<SecretWatch>,
    /// By the path's bytes, as the policy named it (a `Path` hashes component by component, ten times slower, and
    /// this is looked up for every review).
    files: Arc<Mutex<HashMap<OsString, FileEntry, foldhash::fast::RandomState>>>,
    /// [`FILE_RECHECK`], shorter in tests.
    recheck: Duration,
}

impl KeyStore {
    /// `secrets` is `None` where no Kubernetes API is reachable (then `k8s://` references are errors).
    pub fn new(secrets: Option<SecretWatch>) -> Self {
        Self { secrets, files: Arc::default(), recheck: FILE_RECHECK }
    }

    /// The same store, looking at key files again at every read (tests of rotation).
    #[cfg(test)]
    pub(crate) fn rechecking_files_always(self) -> Self {
        Self { recheck: Duration::ZERO, ..self }
    }

    /// Starts watching any Secrets `refs` name (no-op for files, inline keys and already watched Secrets).
    pub fn watch(&self, refs: &[KeyRef]) {
        if let Some(w) = &self.secrets {
            for r in refs {
                if let KeyRef::Secret(s) = r {
                    w.watch(s);
                }
            }
        }
    }

    /// Watches exactly the Secrets `refs` name: starts the missing watches and stops those no longer named (after
    /// a policy reload).
    pub fn track(&self, refs: &[KeyRef]) {
        self.watch(refs);
        if let Some(w) = &self.secrets {
            let keep: Vec<SecretRef> = refs
                .iter()
                .filter_map(|r| match r {
                    KeyRef::Secret(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            w.retain(&keep);
        }
    }

    /// Watches the Secret `r` names and waits up to `timeout` for its first answer.
    pub async fn ready(&self, r: &SecretRef, timeout: std::time::Duration) -> Result<PublicKey, KeysError> {
        match &self.secrets {
            Some(w) => w.ready(r, timeout).await,
            None => Err(KeysError::NoClient(r.to_string())),
        }
    }

    /// The state of every watched Secret key (none without a Kubernetes API).
    pub fn watch_states(&self) -> Vec<(SecretRef, KeyState)> {
        self.secrets.as_ref().map(SecretWatch::states).unwrap_or_default()
    }

    /// The current key for one reference.
    pub fn get(&self, r: &KeyRef) -> Result<PublicKey, KeysError> {
        match r {
            KeyRef::Inline(k) => Ok(k.clone()),
            KeyRef::File(p) => self.file(p),
            KeyRef::Secret(s) => match &self.secrets {
                Some(w) => w.get(s),
                None => Err(KeysError::NoClient(s.to_string())),
            },
        }
    }

    /// The key set of an authority: every reference must resolve (an error names the first that does not).
    pub fn key_set(&self, refs: &[KeyRef]) -> Result<KeySet, KeysError> {
        let keys = refs.iter().map(|r| self.get(r)).collect::<Result<Vec<_>, _>>()?;
        KeySet::new(keys).map_err(|_| KeysError::BadRef("(no key references)".into()))
    }

    fn file(&self, path: &Path) -> Result<PublicKey, KeysError> {
        let now = Instant::now();
        let mut files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = files.get(path.as_os_str())
            && now.duration_since(entry.checked) < self.recheck
        {
            return entry.parsed.clone();
        }
        let source_ref = format!("file {}", path.display());
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                files.remove(path.as_os_str());
                return Err(KeysError::Io { source_ref, error: e.to_string() });
            }
        };
        let (modified, len) = (meta.modified().ok(), meta.len());
        if let Some(entry) = files.get_mut(path.as_os_str())
            && (entry.modified, entry.len) == (modified, len)
        {
            entry.checked = now;
            return entry.parsed.clone();
        }
        let parsed = std::fs::read(path)
            .map_err(|e| KeysError::Io { source_ref: source_ref.clone(), error: e.to_string() })
            .and_then(|pem| PublicKey::from_pem(&pem).map_err(|error| KeysError::Unparseable { source_ref, error }));
        files.insert(path.as_os_str().to_owned(), FileEntry { checked: now, modified, len, parsed: parsed.clone() });
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = include_str!("../../tests/fixtures/vectors/sigstore-rs/key-signed-busybox.pub.pem");
    const CHAINS_PUB: &str = include_str!("../../tests/fixtures/vectors/tekton-chains/cosign.pub");

    #[test]
    fn parses_references() {
        let s = |ns: &str, n: &str, k: &str| {
            KeyRef::Secret(SecretRef { namespace: ns.into(), name: n.into(), key: k.into() })
        };
        assert_eq!(
            KeyRef::parse("k8s://tekton-chains/signing-secrets").unwrap(),
            s("tekton-chains", "signing-secrets", "cosign.pub")
        );
        assert_eq!(KeyRef::parse("k8s://ns/sec/other.pub").unwrap(), s("ns", "sec", "other.pub"));
        assert_eq!(KeyRef::parse("/etc/keys/cosign.pub").unwrap(), KeyRef::File("/etc/keys/cosign.pub".into()));
        assert!(matches!(KeyRef::parse(PUB).unwrap(), KeyRef::Inline(_)));
        for bad in ["k8s://ns", "k8s://ns//key", "k8s://a/b/c/d", "", "awskms://x"] {
            assert_eq!(KeyRef::parse(bad).unwrap_err().code(), "bad-key-ref", "{bad}");
        }
        let private = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(KeyRef::parse(private).unwrap_err().code(), "key-unparseable");
    }

    #[test]
    fn a_key_file_is_looked_at_again_only_after_the_recheck_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.pub");
        std::fs::write(&path, PUB).unwrap();
        let r = KeyRef::File(path.clone());
        let store = KeyStore { recheck: Duration::from_secs(3600), ..KeyStore::new(None) };
        let first = store.get(&r).unwrap().fingerprint().to_owned();
        std::fs::write(&path, CHAINS_PUB.to_owned() + "\n\n").unwrap();
        assert_eq!(store.get(&r).unwrap().fingerprint(), first, "within the interval the parse is reused");
        let fresh = store.clone().rechecking_files_always();
        assert_ne!(fresh.get(&r).unwrap().fingerprint(), first, "after it, the changed file is read");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(fresh.get(&r).unwrap_err().code(), "key-unreadable");
    }

    #[test]
    fn one_key_file_named_by_aliased_paths_reads_the_same_key_and_its_rotation_under_each() {
        // Files are cached by the path's bytes as policies wrote it: aliases are entries of their own, each
        // looked at again, never one alias serving what another saw before a rotation.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.pub");
        std::fs::write(&path, PUB).unwrap();
        let aliases = [path.clone(), dir.path().join(".").join("cosign.pub"), dir.path().join("x/../cosign.pub")];
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let store = KeyStore::new(None).rechecking_files_always();
        let read = |store: &KeyStore| -> Vec<String> {
            aliases.iter().map(|p| store.get(&KeyRef::File(p.clone())).unwrap().fingerprint().to_owned()).collect()
        };
        let first = read(&store);
        assert!(first.iter().all(|f| *f == first[0]), "{first:?}");
        std::fs::write(&path, CHAINS_PUB.to_owned() + "\n\n").unwrap();
        let rotated = read(&store);
        assert!(rotated.iter().all(|f| *f == rotated[0] && *f != first[0]), "{rotated:?}");
        assert_eq!(store.files.lock().unwrap().len(), 3);
    }

    #[test]
    fn files_are_parsed_once_and_again_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.pub");
        let store = KeyStore::new(None).rechecking_files_always();
        let r = KeyRef::File(path.clone());
        assert_eq!(store.get(&r).unwrap_err().code(), "key-unreadable");
        std::fs::write(&path, PUB).unwrap();
        let first = store.get(&r).unwrap();
        std::fs::write(&path, CHAINS_PUB.to_owned() + "\n\n").unwrap();
        let second = store.get(&r).unwrap();
        assert_ne!(first.fingerprint(), second.fingerprint());
        std::fs::write(&path, "not a key, and longer than before: ....................").unwrap();
        let err = store.get(&r).unwrap_err();
        assert!(err.to_string().contains("cosign.pub"), "{err}");
        assert_eq!(store.key_set(&[KeyRef::parse(PUB).unwrap()]).unwrap().keys().len(), 1);
        assert_eq!(store.key_set(&[]).unwrap_err().code(), "bad-key-ref");
        let secret = KeyRef::parse("k8s://ns/name").unwrap();
        assert_eq!(store.get(&secret).unwrap_err().code(), "key-no-client");
    }
}
