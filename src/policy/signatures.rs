//! A policy's `signatures` section: the repository where an image's signatures, attestations and referrers are
//! stored when it is not the image's own (cosign's `COSIGN_REPOSITORY`, Chains' `storage.oci.repository`), the
//! Secrets to pull from it with, and which of cosign's places (tags, referrers) hold them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifact::Storage;
use crate::images::ImageRef;

/// Most `signaturePullSecrets` one policy may name.
pub const MAX_PULL_SECRETS: usize = 16;

/// `spec.signatures` as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignaturesSpec {
    /// `registry/repository` holding the `.sig`/`.att` tags and referrers of the images this policy governs; absent:
    /// each image's own repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// dockerconfigjson Secrets to pull from `repository` with: `NAME` (in provgate's own namespace) or
    /// `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub signature_pull_secrets: Vec<String>,
    /// Where the signer stores signatures and attestations: `tags` (cosign's `sha256-<hex>.sig` and `.att`),
    /// `referrers` (OCI 1.1 referrers: cosign 3's bundles, Tekton Chains' `sigstore-bundle` encoding), or both, the
    /// default. A place left out is a registry request not made for each image this policy governs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    pub storage: Option<Vec<Place>>,
}

/// A place `signatures.storage` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Place {
    Tags,
    Referrers,
}

impl SignaturesSpec {
    /// The places listed in `storage`, or both when it is left out.
    pub fn storage(&self) -> Result<Storage, String> {
        let Some(places) = &self.storage else { return Ok(Storage::BOTH) };
        if places.is_empty() {
            return Err("signatures.storage lists no place to read signatures from: list tags, referrers or both \
                        (both when storage is left out)"
                .into());
        }
        if let Some((_, place)) = places.iter().enumerate().find(|(i, p)| places[..*i].contains(p)) {
            let name = if *place == Place::Tags { "tags" } else { "referrers" };
            return Err(format!("signatures.storage names {name} twice"));
        }
        Ok(Storage { tags: places.contains(&Place::Tags), referrers: places.contains(&Place::Referrers) })
    }
}

/// A Secret named by `signaturePullSecrets`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PullSecretName {
    /// `None`: provgate's own namespace.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for PullSecretName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where a policy looks for signatures instead of the image's own repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRepository {
    /// The repository, normalised like an image (`index.docker.io` is `docker.io`, `HOST:443` is `HOST`).
    repository: ImageRef,
    pull_secrets: Vec<PullSecretName>,
    /// See [`SignatureRepository::key`]: written once, at load.
    key: String,
}

impl SignatureRepository {
    /// Checks and normalises `spec`: a repository without tag or digest, and at most [`MAX_PULL_SECRETS`] Secret
    /// names, each `NAME` or `NAMESPACE/NAME`. `None` when it names no repository (each image's own is read).
    pub fn compile(spec: &SignaturesSpec) -> Result<Option<Self>, String> {
        let Some(written) = spec.repository.as_deref() else {
            if !spec.signature_pull_secrets.is_empty() {
                return Err("signatures.signaturePullSecrets needs signatures.repository: an image's own repository \
                            is read with the credentials its Pod pulls with"
                    .into());
            }
            return Ok(None);
        };
        let last = written.rsplit('/').next().unwrap_or_default();
        if written.contains('@') || (written.contains('/') && last.contains(':')) {
            return Err(format!(
                "signatures.repository {written:?} must name a repository, without a tag or digest (cosign looks up \
                 sha256-<digest>.sig in it)"
            ));
        }
        let repository = ImageRef::parse(written)
            .map_err(|e| format!("signatures.repository {written:?} is not a repository: {e}"))?;
        if spec.signature_pull_secrets.len() > MAX_PULL_SECRETS {
            return Err(format!(
                "signatures.signaturePullSecrets lists {} Secrets, more than {MAX_PULL_SECRETS}",
                spec.signature_pull_secrets.len()
            ));
        }
        let mut pull_secrets: Vec<PullSecretName> = Vec::new();
        for s in &spec.signature_pull_secrets {
            let name = secret_name(s).ok_or_else(|| {
                format!("signatures.signaturePullSecrets: {s:?} is not NAME or NAMESPACE/NAME (Kubernetes names)")
            })?;
            if !pull_secrets.contains(&name) {
                pull_secrets.push(name);
            }
        }
        let secrets: Vec<String> = pull_secrets.iter().map(ToString::to_string).collect();
        let key = format!("{} [{}]", repository.name(), secrets.join(","));
        Ok(Some(Self { repository, pull_secrets, key }))
    }

    /// `registry/repository`, normalised.
    pub fn name(&self) -> String {
        self.repository.name()
    }

    /// The repository, as a reference without tag or digest.
    pub fn repository(&self) -> &ImageRef {
        &self.repository
    }

    pub fn registry(&self) -> &str {
        self.repository.registry()
    }

    /// The signature repository as a reference at `digest`: what the registry client reads `.sig`, `.att` and
    /// referrers of `digest` from.
    pub fn at(&self, digest: &crate::images::Digest) -> ImageRef {
        self.repository.with_digest(digest.clone())
    }

    pub fn pull_secrets(&self) -> &[PullSecretName] {
        &self.pull_secrets
    }

    /// What the answers read from this repository depend on besides the credentials' identity: the repository and
    /// the Secrets named (part of every cache and evidence key of this source).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// `NAME` or `NAMESPACE/NAME`, each a Kubernetes object name (lowercase alphanumerics, `-` and `.`).
fn secret_name(s: &str) -> Option<PullSecretName> {
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 253
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match s.split_once('/') {
        Some((ns, name)) if valid(ns) && valid(name) => {
            Some(PullSecretName { namespace: Some(ns.to_owned()), name: name.to_owned() })
        }
        None if valid(s) => Some(PullSecretName { namespace: None, name: s.to_owned() }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(repository: &str, secrets: &[&str]) -> Result<SignatureRepository, String> {
        let spec = SignaturesSpec {
            repository: Some(repository.to_owned()),
            signature_pull_secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            storage: None,
        };
        SignatureRepository::compile(&spec).map(|r| r.expect("a repository is named"))
    }

    #[test]
    fn repositories_are_normalised_like_images() {
        let table = [
            ("registry.example.com/team/sigs", "registry.example.com/team/sigs"),
            ("REGISTRY.example.com:443/team/sigs", "registry.example.com/team/sigs"),
            ("index.docker.io/acme/sigs", "docker.io/acme/sigs"),
            ("registry-1.docker.io/acme/sigs", "docker.io/acme/sigs"),
            ("acme/sigs", "docker.io/acme/sigs"),
            ("127.0.0.1:5000/sigs", "127.0.0.1:5000/sigs"),
        ];
        for (written, want) in table {
            assert_eq!(compile(written, &[]).unwrap().name(), want, "{written}");
        }
    }

    #[test]
    fn tags_digests_and_bad_secret_names_are_refused() {
        let digest = "sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e";
        let table: &[(&str, &[&str], &str)] = &[
            ("registry.example.com/sigs:latest", &[], "without a tag or digest"),
            (&format!("registry.example.com/sigs@{digest}"), &[], "without a tag or digest"),
            ("", &[], "is not a repository"),
            ("Registry.example.com/UPPER", &[], "is not a repository"),
            ("registry.example.com/sigs", &["a/b/c"], "NAME or NAMESPACE/NAME"),
            ("registry.example.com/sigs", &["/x"], "NAME or NAMESPACE/NAME"),
            ("registry.example.com/sigs", &["Upper"], "NAME or NAMESPACE/NAME"),
            ("registry.example.com/sigs", &[""], "NAME or NAMESPACE/NAME"),
        ];
        for (repository, secrets, needle) in table {
            let e = compile(repository, secrets).unwrap_err();
            assert!(e.contains(needle), "{repository} {secrets:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_PULL_SECRETS).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(compile("registry.example.com/sigs", &refs).unwrap_err().contains("more than"));
    }

    #[test]
    fn pull_secrets_are_kept_once_in_order_and_part_of_the_key() {
        let r = compile("registry.example.com/sigs", &["pull", "ci/pull", "pull"]).unwrap();
        let names: Vec<String> = r.pull_secrets().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["pull", "ci/pull"]);
        assert_eq!(r.pull_secrets()[0].namespace, None);
        assert_ne!(r.key(), compile("registry.example.com/sigs", &["pull"]).unwrap().key());
        assert_ne!(r.key(), compile("registry.example.com/other", &["pull", "ci/pull"]).unwrap().key());
    }
}
