//! Registry settings: per-host transport and credentials, size caps, timeouts, retries, redirects.

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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
    }
}
