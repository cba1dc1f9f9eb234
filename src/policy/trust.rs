//! A policy's `authorities`: who may vouch for an image (public keys by reference, or keyless identities under a
//! trusted root), parsed at load where they are static and named for lookup where they live in a Secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use arc_swap::ArcSwapOption;

use crate::keys::{KeyRef, KeyStore, KeysError};
use crate::verify::{Authority, Identity, IdentityMatcher, KeySet, Keyless, Trust, TrustedRoot};

/// One `spec.authorities[]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthoritySpec {
    pub name: String,
    /// `k8s://NAMESPACE/SECRET[/KEY]` (default key `cosign.pub`), a PEM file path (relative to the policy file),
    /// or inline PEM.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub keyless: Option<KeylessSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessSpec {
    /// A Sigstore `trusted_root.json` (Fulcio CAs, Rekor keys), relative to the policy file.
    pub trusted_root: PathBuf,
    pub identities: Vec<IdentitySpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub issuer_reg_exp: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub subject_reg_exp: Option<String>,
}

/// An authority ready for verification (keyless), or one whose key the key store resolves at review time, so a
/// rotated Secret or file applies without reloading policies.
#[derive(Debug, Clone)]
pub enum AuthoritySource {
    Ready(Arc<Authority>),
    /// `last`: the authority made for the key this source last resolved to, shared by the reviews while that key
    /// stays (an authority's cache key is a formatted fingerprint: made once per key, not once per review).
    Key {
        name: String,
        key: KeyRef,
        last: Arc<ArcSwapOption<Authority>>,
    },
}

impl AuthoritySource {
    pub fn name(&self) -> &str {
        match self {
            Self::Ready(a) => a.name(),
            Self::Key { name, .. } => name,
        }
    }

    /// The authority as it stands now: a key source reads its key from `keys` at every call (so a rotation applies
    /// as soon as the store has seen it: a Secret's next watch event, a file's next look) and reuses the authority
    /// it made last while the key is the same one.
    pub fn resolve(&self, keys: &KeyStore) -> Result<Arc<Authority>, KeysError> {
        match self {
            Self::Ready(authority) => Ok(authority.clone()),
            Self::Key { name, key, last } => {
                let key = keys.get(key)?;
                if let Some(known) = &*last.load()
                    && matches!(known.trust(), Trust::Keys(set) if set.keys() == std::slice::from_ref(&key))
                {
                    return Ok(known.clone());
                }
                let authority = Arc::new(Authority::keys(name.clone(), KeySet::one(key)));
                last.store(Some(authority.clone()));
                Ok(authority)
            }
        }
    }
}

/// Compiles one entry; `base` is the policy file's directory.
pub fn compile(spec: &AuthoritySpec, base: &Path) -> Result<AuthoritySource, String> {
    let at = |m: String| format!("authorities[{}]: {m}", spec.name);
    match (&spec.key, &spec.keyless) {
        (Some(key), None) => {
            let key = match KeyRef::parse(key).map_err(|e| at(e.to_string()))? {
                KeyRef::File(path) => {
                    let path = base.join(path);
                    // Read now so a missing or broken key file is a load error; the store re-reads it on change.
                    KeyStore::default().get(&KeyRef::File(path.clone())).map_err(|e| at(e.to_string()))?;
                    KeyRef::File(path)
                }
                other => other,
            };
            Ok(AuthoritySource::Key { name: spec.name.clone(), key, last: Arc::default() })
        }
        (None, Some(keyless)) => {
            let path = base.join(&keyless.trusted_root);
            let json = std::fs::read(&path).map_err(|e| at(format!("trustedRoot {}: {e}", path.display())))?;
            let root = TrustedRoot::from_json(&json).map_err(|e| at(format!("trustedRoot {}: {e}", path.display())))?;
            let identities = keyless.identities.iter().map(identity).collect::<Result<Vec<_>, _>>().map_err(at)?;
            let keyless = Keyless::new(Arc::new(root), identities).map_err(|e| at(e.to_string()))?;
            Ok(AuthoritySource::Ready(Arc::new(Authority::new(spec.name.clone(), Trust::Keyless(keyless)))))
        }
        _ => Err(at("set exactly one of key or keyless".into())),
    }
}

fn identity(spec: &IdentitySpec) -> Result<Identity, String> {
    let pick = |exact: &Option<String>, re: &Option<String>, what: &str| match (exact, re) {
        (Some(v), None) => Ok(IdentityMatcher::Exact(v.clone())),
        (None, Some(r)) => IdentityMatcher::regex(r).map_err(|e| format!("{what}RegExp {r:?}: {e}")),
        _ => Err(format!("identities: set exactly one of {what} or {what}RegExp")),
    };
    Ok(Identity {
        subject: pick(&spec.subject, &spec.subject_reg_exp, "subject")?,
        issuer: pick(&spec.issuer, &spec.issuer_reg_exp, "issuer")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_and_inline_keys_parse_at_load() {
        let chains = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vectors/tekton-chains/cosign.pub"
        ))
        .unwrap();
        let spec = AuthoritySpec { name: "chains".into(), key: Some(chains.clone()), keyless: None };
        assert!(matches!(compile(&spec, Path::new(".")).unwrap(), AuthoritySource::Key { key: KeyRef::Inline(_), .. }));
        let broken = AuthoritySpec { key: Some(chains.replace("MFkw", "MFkx")), ..spec.clone() };
        assert!(compile(&broken, Path::new(".")).is_err());
        let secret = AuthoritySpec { key: Some("k8s://provgate-system/chains".into()), ..spec.clone() };
        assert!(matches!(
            compile(&secret, Path::new(".")).unwrap(),
            AuthoritySource::Key { key: KeyRef::Secret(_), .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cosign.pub"), &chains).unwrap();
        let file = AuthoritySpec { key: Some("cosign.pub".into()), ..spec.clone() };
        match compile(&file, dir.path()).unwrap() {
            AuthoritySource::Key { key: KeyRef::File(p), .. } => assert_eq!(p, dir.path().join("cosign.pub")),
            other => panic!("{other:?}"),
        }
        let both =
            AuthoritySpec { keyless: Some(KeylessSpec { trusted_root: "x.json".into(), identities: vec![] }), ..spec };
        assert!(compile(&both, Path::new(".")).unwrap_err().contains("exactly one of key or keyless"));
        let missing = AuthoritySpec { name: "f".into(), key: Some("nope.pub".into()), keyless: None };
        assert!(compile(&missing, Path::new("/nonexistent")).unwrap_err().contains("/nonexistent/nope.pub"));
    }

    #[test]
    fn a_key_source_reuses_its_authority_while_the_key_stays_and_makes_another_when_it_is_rotated() {
        let read =
            |path: &str| std::fs::read_to_string(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR")));
        let (chains, other) = (
            read("vectors/tekton-chains/cosign.pub").unwrap(),
            read("vectors/sigstore-rs/key-signed-busybox.pub.pem").unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.pub");
        std::fs::write(&path, &chains).unwrap();
        let spec = AuthoritySpec { name: "chains".into(), key: Some("cosign.pub".into()), keyless: None };
        let source = compile(&spec, dir.path()).unwrap();
        let store = KeyStore::new(None).rechecking_files_always();
        let made_for = |pem: &str| {
            let key = crate::verify::PublicKey::from_pem(pem.as_bytes()).unwrap();
            Authority::keys("chains", KeySet::one(key)).cache_key_str().to_owned()
        };

        let first = source.resolve(&store).unwrap();
        assert_eq!(first.cache_key_str(), made_for(&chains));
        assert!(Arc::ptr_eq(&first, &source.resolve(&store).unwrap()), "the same key: the same authority");
        assert!(Arc::ptr_eq(&first, &source.clone().resolve(&store).unwrap()), "a clone shares it");

        std::fs::write(&path, other.clone() + "\n").unwrap();
        let rotated = source.resolve(&store).unwrap();
        assert_eq!(rotated.cache_key_str(), made_for(&other), "a rotated key is a new authority");
        assert_ne!(rotated.cache_key_str(), first.cache_key_str());

        std::fs::remove_file(&path).unwrap();
        assert_eq!(source.resolve(&store).unwrap_err().code(), "key-unreadable", "no key, no authority");
        std::fs::write(&path, &chains).unwrap();
        assert_eq!(source.resolve(&store).unwrap().cache_key_str(), made_for(&chains), "the key back, its authority");
    }
}
