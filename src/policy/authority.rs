//! A policy's `authorities`: who may vouch for an image (public keys by reference, or keyless identities under a
//! trusted root), parsed at load where they are static and named for lookup where they live in a Secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::verify::{Authority, Identity, KeySet, Keyless, Matcher, PublicKey, Trust, TrustedRoot};

/// One `spec.authorities[]` entry as written.
#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessSpec {
    /// A Sigstore `trusted_root.json` (Fulcio CAs, Rekor keys), relative to the policy file.
    pub trusted_root: PathBuf,
    pub identities: Vec<IdentitySpec>,
}

#[derive(Debug, Clone, Deserialize)]
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

/// Where a key lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A data key of a Kubernetes Secret.
    Secret {
        namespace: String,
        name: String,
        key: String,
    },
    File(PathBuf),
    Inline(String),
}

impl KeyRef {
    /// Parses cosign's key reference conventions; relative file paths are taken from `base`.
    pub fn parse(s: &str, base: &Path) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("k8s://") {
            let parts: Vec<&str> = rest.split('/').collect();
            let ok = |p: &&str| !p.is_empty();
            return match parts.as_slice() {
                [ns, name] if parts.iter().all(ok) => {
                    Ok(Self::Secret { namespace: (*ns).into(), name: (*name).into(), key: "cosign.pub".into() })
                }
                [ns, name, key] if parts.iter().all(ok) => {
                    Ok(Self::Secret { namespace: (*ns).into(), name: (*name).into(), key: (*key).into() })
                }
                _ => Err(format!("{s:?} is not k8s://NAMESPACE/SECRET or k8s://NAMESPACE/SECRET/KEY")),
            };
        }
        if s.trim_start().starts_with("-----BEGIN") {
            return Ok(Self::Inline(s.to_owned()));
        }
        if s.is_empty() {
            return Err("key must not be empty".into());
        }
        Ok(Self::File(base.join(s)))
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { namespace, name, key } => write!(f, "k8s://{namespace}/{name}/{key}"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Inline(_) => write!(f, "inline PEM"),
        }
    }
}

/// An authority ready for verification, or one whose key is read from a Secret at review time.
#[derive(Debug, Clone)]
pub enum AuthoritySource {
    Ready(Arc<Authority>),
    Secret { name: String, key: KeyRef },
}

impl AuthoritySource {
    pub fn name(&self) -> &str {
        match self {
            Self::Ready(a) => a.name(),
            Self::Secret { name, .. } => name,
        }
    }
}

/// Compiles one entry; `base` is the policy file's directory.
pub fn compile(spec: &AuthoritySpec, base: &Path) -> Result<AuthoritySource, String> {
    let at = |m: String| format!("authorities[{}]: {m}", spec.name);
    match (&spec.key, &spec.keyless) {
        (Some(key), None) => match KeyRef::parse(key, base).map_err(at)? {
            secret @ KeyRef::Secret { .. } => Ok(AuthoritySource::Secret { name: spec.name.clone(), key: secret }),
            other => {
                let keys = read_keys(&other).map_err(at)?;
                Ok(AuthoritySource::Ready(Arc::new(Authority::keys(spec.name.clone(), keys))))
            }
        },
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

/// Parses every PEM key in a file or inline text into a non-empty key set.
pub fn read_keys(key: &KeyRef) -> Result<KeySet, String> {
    let pem = match key {
        KeyRef::File(path) => std::fs::read(path).map_err(|e| format!("key {}: {e}", path.display()))?,
        KeyRef::Inline(text) => text.clone().into_bytes(),
        KeyRef::Secret { .. } => return Err(format!("key {key} is read from the cluster, not from a file")),
    };
    keys_from_pem(&pem).map_err(|e| format!("key {key}: {e}"))
}

/// Every `PUBLIC KEY` / `CERTIFICATE` block of `pem` as a key set (one or more keys, never zero).
pub fn keys_from_pem(pem: &[u8]) -> Result<KeySet, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let Some(end_marker) = block.find("-----END ") else { break };
        let end = block[end_marker..].find('\n').map_or(block.len(), |i| end_marker + i);
        keys.push(PublicKey::from_pem(&block.as_bytes()[..end]).map_err(|e| e.to_string())?);
        rest = &block[end..];
    }
    KeySet::new(keys).map_err(|_| "no PEM public key found".to_owned())
}

fn identity(spec: &IdentitySpec) -> Result<Identity, String> {
    let pick = |exact: &Option<String>, re: &Option<String>, what: &str| match (exact, re) {
        (Some(v), None) => Ok(Matcher::Exact(v.clone())),
        (None, Some(r)) => Matcher::regex(r).map_err(|e| format!("{what}RegExp {r:?}: {e}")),
        _ => Err(format!("identities: set exactly one of {what} or {what}RegExp")),
    };
    Ok(Identity {
        subject: pick(&spec.subject, &spec.subject_reg_exp, "subject")?,
        issuer: pick(&spec.issuer, &spec.issuer_reg_exp, "issuer")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn key_references() {
        let base = Path::new("/policies");
        let table: &[(&str, KeyRef)] = &[
            (
                "k8s://provgate-system/chains",
                KeyRef::Secret { namespace: "provgate-system".into(), name: "chains".into(), key: "cosign.pub".into() },
            ),
            (
                "k8s://tekton-chains/signing-secrets/x.pub",
                KeyRef::Secret {
                    namespace: "tekton-chains".into(),
                    name: "signing-secrets".into(),
                    key: "x.pub".into(),
                },
            ),
            ("keys/cosign.pub", KeyRef::File("/policies/keys/cosign.pub".into())),
            ("/etc/keys/cosign.pub", KeyRef::File("/etc/keys/cosign.pub".into())),
        ];
        for (input, want) in table {
            assert_eq!(&KeyRef::parse(input, base).unwrap(), want, "{input}");
        }
        for bad in ["k8s://only-namespace", "k8s://ns//key", "k8s://a/b/c/d", ""] {
            assert!(KeyRef::parse(bad, base).is_err(), "{bad:?}");
        }
        assert!(matches!(KeyRef::parse("-----BEGIN PUBLIC KEY-----\n", base).unwrap(), KeyRef::Inline(_)));
    }

    #[test]
    fn pem_files_and_inline_keys_parse_at_load() {
        let chains = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/vectors/tekton-chains/cosign.pub"
        ))
        .unwrap();
        let set = keys_from_pem(chains.as_bytes()).unwrap();
        assert_eq!(set.keys().len(), 1);
        let two = format!("{chains}\n{chains}");
        assert_eq!(keys_from_pem(two.as_bytes()).unwrap().keys().len(), 2);
        assert!(keys_from_pem(b"no key here").unwrap_err().contains("no PEM public key"));
        let broken = chains.replace("MFkw", "MFkx");
        assert!(keys_from_pem(broken.as_bytes()).is_err());
        let spec = AuthoritySpec { name: "chains".into(), key: Some(chains.clone()), keyless: None };
        assert!(matches!(compile(&spec, Path::new(".")).unwrap(), AuthoritySource::Ready(_)));
        let both =
            AuthoritySpec { keyless: Some(KeylessSpec { trusted_root: "x.json".into(), identities: vec![] }), ..spec };
        assert!(compile(&both, Path::new(".")).unwrap_err().contains("exactly one of key or keyless"));
        let missing = AuthoritySpec { name: "f".into(), key: Some("nope.pub".into()), keyless: None };
        assert!(compile(&missing, Path::new("/nonexistent")).unwrap_err().contains("/nonexistent/nope.pub"));
    }
}
