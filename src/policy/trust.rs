//! A policy's `authorities`: who may vouch for an image (public keys by reference, or keyless identities under a
//! trusted root), parsed at load where they are static and named for lookup where they live in a Secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyRef, KeyStore};
use crate::verify::{Authority, Identity, IdentityMatcher, Keyless, Trust, TrustedRoot};

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
    Key { name: String, key: KeyRef },
}

impl AuthoritySource {
    pub fn name(&self) -> &str {
        match self {
            Self::Ready(a) => a.name(),
            Self::Key { name, .. } => name,
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
            Ok(AuthoritySource::Key { name: spec.name.clone(), key })
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
}
