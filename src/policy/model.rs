//! The ImagePolicy file format as users write it (`policies/*.yaml`): strict serde types, no defaults guessed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "provgate.dev/v1alpha1";
pub const KIND: &str = "ImagePolicy";

/// One YAML document of a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Which images the policy governs and what must be verified about them; the same in a policy file and in an
/// ImagePolicy object.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, kube::CustomResource)]
#[kube(
    group = "provgate.dev",
    version = "v1alpha1",
    kind = "ImagePolicy",
    doc = "An image policy of provgate: images it matches are admitted only when what it requires is verified.",
    shortname = "ipol",
    status = "super::cluster::ImagePolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub mode: Mode,
    #[serde(rename = "match")]
    pub matches: MatchSpec,
    /// Who may vouch for an image: keys or keyless identities.
    #[serde(default)]
    pub authorities: Vec<super::trust::AuthoritySpec>,
    /// What must be verified: signature, attestations, digest pinning. Absent with authorities: a signature from
    /// any of them.
    #[serde(default)]
    pub require: Option<super::require::RequireSpec>,
    /// CEL validations, like ValidatingAdmissionPolicy's; compiled at load.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub validations: Vec<super::eval::Validation>,
    /// Where the signatures are stored, when not beside the image.
    #[serde(default)]
    pub signatures: Option<super::signatures::SignaturesSpec>,
    /// Documents that verified statements name by digest (SBOMs, test results, scan reports), fetched from a
    /// content-addressable store and checked against the signed sha256; validations read them as
    /// `evidence.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub evidence: Vec<crate::evidence::spec::EvidenceSpec>,
}

/// What a failing policy does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// A failure denies the request.
    #[default]
    Enforce,
    /// A failure admits the request with a warning shown to the user.
    Warn,
    /// A failure admits the request silently; it is recorded in the audit trail only.
    Audit,
}

impl Mode {
    /// The word a policy file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Warn => "warn",
            Self::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Globs on the normalised image reference; `*` stays within one path segment, `**` crosses `/`.
    pub images: Vec<String>,
    /// Namespace globs; empty means every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
}
