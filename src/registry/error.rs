//! The registry error taxonomy: one variant per way a registry call can fail, each with an actionable message.

use std::time::Duration;

/// Why a registry call failed. `Display` is written for the person whose image was denied; `code()` is a stable label
/// for audit records and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} was not found on {registry}: check the image name, tag or digest, and that it was pushed")]
    NotFound { registry: String, what: String },
    #[error(
        "{registry} refused access to {repository} ({detail}): provide pull credentials for {registry} \
         (dockerconfigjson or imagePullSecrets) that may read {repository}"
    )]
    Unauthorized { registry: String, repository: String, detail: String },
    #[error("{registry} is rate limiting requests{}: retry later or configure credentials with a higher quota", retry_hint(.retry_after))]
    RateLimited { registry: String, retry_after: Option<Duration> },
    #[error("{registry} could not be reached ({detail}): check the registry address, its TLS settings and the network")]
    Unreachable { registry: String, detail: String },
    #[error(
        "{registry} failed with HTTP {status} for {what} ({attempts} attempts): the registry is failing; retry later \
         or contact its operator"
    )]
    ServerError { registry: String, what: String, status: u16, attempts: u32 },
    #[error(
        "{registry} did not answer in time for {what}: the registry is slow or stalled; retry, or raise the deadline"
    )]
    TimedOut { registry: String, what: String },
    #[error(
        "{what} from {registry} does not match its digest (expected {expected}, got {actual}): the registry or a proxy \
         served altered content"
    )]
    DigestMismatch { registry: String, what: String, expected: String, actual: String },
    #[error(
        "{what} from {registry} is larger than the {limit}-byte limit: raise the registries size limit if it is legitimate"
    )]
    TooLarge { registry: String, what: String, limit: u64 },
    #[error("{what} from {registry} is malformed: {detail}")]
    Malformed { registry: String, what: String, detail: String },
    #[error(
        "{what} from {registry} would exceed the {limit}-byte budget per {scope} (registries.{key}): the signatures and \
         attestations stored for this image are too large or too many; remove stale ones, or raise registries.{key} \
         together with provgate's memory limit"
    )]
    OverBudget { registry: String, what: String, scope: &'static str, key: &'static str, limit: u64 },
    #[error(
        "no room to read {what} from {registry} before the deadline: reviews in progress already hold \
         registries.maxBytesInFlight ({limit} bytes) read from registries; retry, or raise it together with \
         provgate's memory limit"
    )]
    Busy { registry: String, what: String, limit: u64 },
    #[error("{registry} names {realm} as its token realm, which is refused: {detail}")]
    TokenRealm { registry: String, realm: String, detail: String },
}

fn retry_hint(after: &Option<Duration>) -> String {
    after.map(|d| format!(" (it asks to wait {}s)", d.as_secs())).unwrap_or_default()
}

impl RegistryError {
    /// A stable, machine-readable label for this kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "registry-not-found",
            Self::Unauthorized { .. } => "registry-unauthorized",
            Self::RateLimited { .. } => "registry-rate-limited",
            Self::Unreachable { .. } => "registry-unreachable",
            Self::ServerError { .. } => "registry-server-error",
            Self::TimedOut { .. } => "registry-timed-out",
            Self::DigestMismatch { .. } => "registry-digest-mismatch",
            Self::TooLarge { .. } => "registry-too-large",
            Self::Malformed { .. } => "registry-malformed",
            Self::OverBudget { .. } => "registry-over-budget",
            Self::Busy { .. } => "registry-busy",
            Self::TokenRealm { .. } => "registry-token-realm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_messages_name_the_registry() {
        let r = || "reg.example:5000".to_owned();
        let w = || "manifest app:v1".to_owned();
        let all = [
            RegistryError::NotFound { registry: r(), what: w() },
            RegistryError::Unauthorized { registry: r(), repository: "app".into(), detail: "401".into() },
            RegistryError::RateLimited { registry: r(), retry_after: Some(Duration::from_secs(3)) },
            RegistryError::Unreachable { registry: r(), detail: "connection refused".into() },
            RegistryError::ServerError { registry: r(), what: w(), status: 500, attempts: 3 },
            RegistryError::TimedOut { registry: r(), what: w() },
            RegistryError::DigestMismatch { registry: r(), what: w(), expected: "a".into(), actual: "b".into() },
            RegistryError::TooLarge { registry: r(), what: w(), limit: 10 },
            RegistryError::Malformed { registry: r(), what: w(), detail: "not JSON".into() },
            RegistryError::OverBudget { registry: r(), what: w(), scope: "image", key: "maxImageBytes", limit: 9 },
            RegistryError::Busy { registry: r(), what: w(), limit: 9 },
            RegistryError::TokenRealm { registry: r(), realm: "http://x/token".into(), detail: "no".into() },
        ];
        let mut codes: Vec<_> = all.iter().map(RegistryError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            assert!(e.to_string().contains("reg.example:5000"), "{e}");
        }
        assert!(all[2].to_string().contains("wait 3s"));
    }
}
