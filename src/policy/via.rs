//! Where else an attestation may come from than the image's own signatures: `require.attestations[].via`, a release
//! list the policy names (an index, or an artifact holding a JSON list of `name@sha256:…`), whose own signature and
//! attestation are verified and which then covers every image it pins.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::images::ImageRef;

/// `require.attestations[].via` as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ViaSpec {
    /// The release list, by tag or digest: an image index (it pins its manifests), or an artifact whose one layer
    /// is a JSON list of `name@sha256:…` references (it pins each digest under its name). Its own signature and
    /// this attestation must verify under the authorities.
    pub list: String,
    /// Only a list of this artifact type counts: its `artifactType` (for an artifact without one, its config's
    /// media type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// A compiled `via`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The list, normalised like an image (a tag is resolved at every review, like an image's).
    pub list: ImageRef,
    pub artifact_type: Option<String>,
}

impl Via {
    /// Checks that `spec.list` is an image reference and that an `artifactType`, if given, is not empty.
    pub fn compile(spec: &ViaSpec, what: &str) -> Result<Self, String> {
        let list = ImageRef::parse(&spec.list)
            .map_err(|e| format!("{what}.via.list {:?} is not a reference to a release list: {e}", spec.list))?;
        if spec.artifact_type.as_deref().is_some_and(str::is_empty) {
            return Err(format!("{what}.via.artifactType must not be empty (leave it out to accept any type)"));
        }
        Ok(Self { list, artifact_type: spec.artifact_type.clone() })
    }

    /// "release list registry.example.com/releases/app:v1 (of type …)".
    pub fn describe(&self) -> String {
        match &self.artifact_type {
            Some(t) => format!("release list {} (of type {t})", self.list),
            None => format!("release list {}", self.list),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_a_reference_and_a_type_is_not_empty() {
        let spec = |list: &str, t: Option<&str>| ViaSpec { list: list.into(), artifact_type: t.map(str::to_owned) };
        let via = Via::compile(&spec("REGISTRY.example.com:443/releases/app:v1", None), "a").unwrap();
        assert_eq!(via.list.to_string(), "registry.example.com/releases/app:v1");
        assert_eq!(via.describe(), "release list registry.example.com/releases/app:v1");
        let pinned = format!("r.example/l@sha256:{}", "a".repeat(64));
        let typed = Via::compile(&spec(&pinned, Some("t")), "a").unwrap();
        assert!(typed.describe().ends_with("(of type t)"));
        assert!(Via::compile(&spec("Not A Ref", None), "a").unwrap_err().contains("a.via.list \"Not A Ref\""));
        assert!(Via::compile(&spec("r.example/l:1", Some("")), "a").unwrap_err().contains("must not be empty"));
    }
}
