//! Registry settings: per-host transport, credentials and token realms, size caps, byte budgets, timeouts, retries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The `registries:` section of the app config. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryConfig {
    /// Settings per registry host as written in image references, e.g. `127.0.0.1:5000` or `ghcr.io`.
    pub hosts: BTreeMap<String, HostConfig>,
    /// Largest manifest (or referrers page) read, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest blob (signature payload, DSSE envelope, bundle) read, in bytes.
    pub max_blob_bytes: u64,
    /// Most layers read from one signature/attestation manifest, and most referrers followed.
    pub max_layers: usize,
    /// Bytes read for the artifacts of one image digest (its `.sig`, `.att`, referrers and their layers; a blob listed
    /// many times counts once), and held as derived data such as layer annotations.
    pub max_image_bytes: u64,
    /// Bytes read from registries by one review, over all its images.
    pub max_review_bytes: u64,
    /// Bytes read from registries and still held by the reviews in progress, process-wide. A read that does not fit
    /// waits for room until its review's deadline, then fails.
    pub max_bytes_in_flight: u64,
    /// Longest a single HTTP exchange may take (always cut short by the review's deadline).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Longest a TCP/TLS connect may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries after a 429 or 5xx answer (never past the deadline).
    pub retries: u32,
    /// Redirects followed per request (blob downloads are often redirected to a CDN).
    pub max_redirects: usize,
    /// Referrers pages followed through `Link` headers.
    pub max_referrer_pages: usize,
    /// Distinct (registry, credentials) sessions kept, each with its own token cache.
    pub max_sessions: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 16 << 20,
            max_layers: 128,
            max_image_bytes: 32 << 20,
            max_review_bytes: 48 << 20,
            max_bytes_in_flight: 64 << 20,
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            retries: 2,
            max_redirects: 5,
            max_referrer_pages: 16,
            max_sessions: 256,
        }
    }
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HostConfig {
    /// Talk plain HTTP to this host (local test registries only).
    pub insecure: bool,
    /// Extra PEM CA certificates trusted for this host, in addition to the system roots.
    pub ca_bundle: Option<PathBuf>,
    /// A dockerconfigjson file whose entry for this host is the default credentials.
    pub docker_config_json: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) besides this registry's own that may serve its Bearer tokens, e.g.
    /// `auth.example.com` when the registry names `https://auth.example.com/token` as its realm. Realms must be https
    /// (plain http only for an `insecure` host). `docker.io` has `auth.docker.io` built in.
    pub token_realms: Vec<String>,
}

impl RegistryConfig {
    /// Checks that the caps nest: blob and manifest ≤ image ≤ review ≤ in flight (≤ 4 GiB).
    pub fn check_budgets(&self) -> Result<(), String> {
        let chain = [
            ("maxManifestBytes", self.max_manifest_bytes),
            ("maxBlobBytes", self.max_blob_bytes),
            ("maxImageBytes", self.max_image_bytes),
            ("maxReviewBytes", self.max_review_bytes),
            ("maxBytesInFlight", self.max_bytes_in_flight),
        ];
        for (name, value) in chain {
            if value == 0 {
                return Err(format!("registries.{name} must be above 0"));
            }
        }
        let ordered = [(chain[0], chain[2]), (chain[1], chain[2]), (chain[2], chain[3]), (chain[3], chain[4])];
        for ((small, s), (big, b)) in ordered {
            if s > b {
                return Err(format!("registries.{small} ({s}) must not exceed registries.{big} ({b})"));
            }
        }
        if self.max_bytes_in_flight > u64::from(u32::MAX) {
            return Err(format!("registries.maxBytesInFlight ({}) must not exceed 4 GiB", self.max_bytes_in_flight));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_defaults_and_unknown_fields_fail() {
        let c: RegistryConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c, RegistryConfig::default());
        let c: RegistryConfig = serde_yaml_ng::from_str(
            "hosts: {\"127.0.0.1:5000\": {insecure: true, caBundle: /ca.pem}}\ncallTimeout: 2s\nmaxBlobBytes: 10",
        )
        .unwrap();
        assert!(c.hosts["127.0.0.1:5000"].insecure);
        assert_eq!(c.call_timeout, Duration::from_secs(2));
        assert_eq!(c.max_blob_bytes, 10);
        assert!(serde_yaml_ng::from_str::<RegistryConfig>("hostz: {}").is_err());
        assert!(serde_yaml_ng::from_str::<RegistryConfig>("hosts: {a: {insecur: true}}").is_err());
        let c: RegistryConfig =
            serde_yaml_ng::from_str("hosts: {reg.example: {tokenRealms: [auth.example]}}\nmaxImageBytes: 1024")
                .unwrap();
        assert_eq!(c.hosts["reg.example"].token_realms, vec!["auth.example".to_owned()]);
        assert_eq!(c.max_image_bytes, 1024);
    }

    #[test]
    fn budgets_must_nest() {
        assert_eq!(RegistryConfig::default().check_budgets(), Ok(()));
        let bad = [
            RegistryConfig { max_image_bytes: 1 << 20, ..RegistryConfig::default() },
            RegistryConfig { max_review_bytes: 16 << 20, ..RegistryConfig::default() },
            RegistryConfig { max_bytes_in_flight: 40 << 20, ..RegistryConfig::default() },
            RegistryConfig { max_bytes_in_flight: 0, ..RegistryConfig::default() },
            RegistryConfig { max_bytes_in_flight: 8 << 30, max_review_bytes: 8 << 30, ..RegistryConfig::default() },
        ];
        for c in bad {
            assert!(c.check_budgets().is_err(), "{c:?}");
        }
    }
}
