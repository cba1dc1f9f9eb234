//! Image policies: the file format, loading with file:line errors, and which policies govern an image.

pub mod cel;
pub mod cli;
pub mod cluster;
pub mod eval;
mod examples;
mod load;
mod matcher;
pub mod model;
pub mod provenance;
pub mod require;
pub mod signatures;
mod store;
pub mod trust;
pub mod via;

use std::path::PathBuf;
use std::sync::Arc;

pub use self::cel::{CelEngine, CompileError, Expect, Expression};
pub use eval::{
    Activation, CelInput, CompiledValidation, Evaluation, ImageInfo, InputError, Limits, PolicyOutcome, Validation,
    ValidationOutcome,
};
pub use load::{LoadError, LoadErrors, load, load_sources, policy_files};
pub use matcher::Matcher;
pub use model::{ImagePolicy, Mode};
pub use store::PolicyStore;

use crate::images::ImageRef;

/// The process-wide CEL engine every policy is compiled with and evaluated in.
pub fn engine() -> Result<&'static CelEngine, CompileError> {
    static ENGINE: std::sync::LazyLock<Result<CelEngine, CompileError>> = std::sync::LazyLock::new(CelEngine::new);
    ENGINE.as_ref().map_err(Clone::clone)
}

/// One compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// The file it came from and the line its document starts on, for explanations.
    pub file: PathBuf,
    pub line: usize,
    pub mode: Mode,
    pub matcher: Matcher,
    /// `spec.authorities`, parsed where static.
    pub authorities: Vec<trust::AuthoritySource>,
    /// `spec.require`, checked against the authorities.
    pub requirements: require::Requirements,
    /// `spec.validations`, compiled; all must pass.
    pub validations: Vec<CompiledValidation>,
    /// `spec.signatures`: the repository signatures are looked up in; `None` for the image's own.
    pub signatures: Option<Arc<signatures::SignatureRepository>>,
    /// `spec.signatures.storage`: where in that repository they are looked up (both places by default).
    pub storage: crate::artifact::Storage,
    /// `spec.evidence`, compiled: what is fetched by digest for validations to read as `evidence.<name>`.
    pub evidence: Vec<crate::evidence::spec::EvidenceDecl>,
}

impl Policy {
    /// Whether judging this policy needs anything from the registry.
    pub fn needs_evidence(&self) -> bool {
        !self.authorities.is_empty()
    }
}

/// An immutable, compiled set of policies; swapped whole when the files change.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    generation: String,
}

impl PolicySet {
    pub fn new(policies: Vec<Arc<Policy>>, generation: String) -> Self {
        Self { policies, generation }
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// A short hash of the files' content; part of every cache key that depends on policy.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// The policies that govern `image` in `namespace`, in load order.
    pub fn matching(&self, image: &ImageRef, namespace: &str) -> Vec<Arc<Policy>> {
        let image = matcher::Candidates::of(image);
        self.policies.iter().filter(|p| p.matcher.matches_any(&image, namespace)).cloned().collect()
    }
}
