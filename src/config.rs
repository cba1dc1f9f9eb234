//! The validated configuration (`provgate.yaml`; every field has a default, so no file is needed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::CredentialsConfig;
use crate::decide::NoMatch;
use crate::gather::CacheConfig;
use crate::registry::RegistryConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// HTTPS address of `/validate`.
    pub listen: SocketAddr,
    /// Plain HTTP address of `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    pub tls: TlsConfig,
    /// A policy file or a directory of `*.yaml` policies (a mounted ConfigMap works).
    pub policies: PathBuf,
    /// How often the policy files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub policy_poll: Duration,
    /// One review's whole budget; keep it below the webhook's `timeoutSeconds`.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// What happens to images no policy matches.
    pub no_match: NoMatch,
    /// Larger AdmissionReview bodies are refused with 413.
    pub max_request_bytes: usize,
    /// Limits of the HTTPS listener: connections, slow clients, reviews at once.
    pub server: ServerConfig,
    pub audit: AuditConfig,
    /// Registry access: plain-HTTP hosts, CA bundles, credentials, size caps, timeouts.
    pub registries: RegistryConfig,
    /// Verification caches.
    pub cache: CacheConfig,
    /// Evidence fetched by digest for policies' `spec.evidence`.
    pub evidence: crate::evidence::fetch::EvidenceConfig,
    /// Pull credentials from Kubernetes Secrets.
    pub credentials: CredentialsConfig,
    /// Most image fields judged in one review; a larger object is denied.
    pub max_images_per_review: usize,
    /// Largest admitted object, as JSON, that a review judges; a larger one is denied.
    pub max_object_bytes: usize,
    /// Test-only fault injection; never read from a file.
    #[doc(hidden)]
    #[serde(skip)]
    pub test_hooks: TestHooks,
}

/// Limits of the HTTPS listener, so that slow, silent or abandoned clients cannot stop admission for others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ServerConfig {
    /// Connections open at once on the HTTPS port; further ones wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// A connection that carries no request for this long is closed: a client must finish the TLS handshake and
    /// send a whole request head within it, and send the body within it once the head has arrived; idle
    /// keep-alive connections are closed after it too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Reviews judged at once; a review waits up to `reviewQueueTimeout` for a slot, then is denied `overloaded`.
    pub max_concurrent_reviews: usize,
    /// How long a review may wait for a slot (never longer than the `deadline`, which the wait counts against).
    #[serde(with = "humantime_serde")]
    pub review_queue_timeout: Duration,
    /// Bytes of request bodies held at once, counted as they arrive and released with the answer; a request that
    /// cannot get its bytes within `reviewQueueTimeout` is refused with 503. At least `maxRequestBytes`.
    pub max_request_bytes_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_reviews: 64,
            review_queue_timeout: Duration::from_secs(2),
            max_request_bytes_in_flight: 16 * 1024 * 1024,
        }
    }
}

/// Faults the integration tests inject to prove the handler's guarantees; unset in every real configuration.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// A review of an object in this namespace panics while it is being judged.
    pub panic_in_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TlsConfig {
    /// Serving certificate and key (PEM), re-read when they change. When both are unset, a self-signed pair is
    /// created under `./certs` on first start.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to. When set, every connection to the HTTPS port
    /// must present a client certificate issued by one of them (the API server's, from its admission kubeconfig);
    /// re-read when it changes, like the serving pair.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files above are checked for changes (default 30 s).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
    /// Self-managed TLS: the CA and serving pair live in a Secret provgate creates and renews, and provgate writes
    /// the CA bundle into its own webhook configurations. Exclusive with `certFile`/`keyFile`.
    pub managed: Option<ManagedTlsConfig>,
}

/// `tls.managed`: where the managed CA and serving pair live, whom they serve, and when they are renewed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ManagedTlsConfig {
    /// The Secret holding the CA and the serving pair; created when absent.
    pub secret: String,
    /// provgate's own namespace, where the Secret lives and the Service is.
    pub namespace: String,
    /// The webhook Service; the serving certificate covers its DNS names.
    pub service: String,
    /// More names the serving certificate covers: DNS names or IP addresses.
    pub extra_names: Vec<String>,
    /// The webhook configurations whose `caBundle` provgate writes. No other configuration is touched.
    pub webhooks: WebhookNames,
    /// Lifetime of a serving certificate.
    #[serde(with = "humantime_serde")]
    pub validity: Duration,
    /// A serving certificate is renewed when less than this remains (at least `validity` renews at every check).
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
    /// Lifetime of a CA.
    #[serde(with = "humantime_serde")]
    pub ca_validity: Duration,
    /// A new CA is published beside the current one when less than this remains of it.
    #[serde(with = "humantime_serde")]
    pub ca_renew_before: Duration,
    /// How long a new CA is published before it signs serving certificates, so every API server trusts it first.
    #[serde(with = "humantime_serde")]
    pub ca_handover: Duration,
    /// How often the Secret and the webhook configurations are checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

/// Names of provgate's own webhook configurations, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WebhookNames {
    pub validating: Vec<String>,
    pub mutating: Vec<String>,
}

impl Default for WebhookNames {
    fn default() -> Self {
        Self { validating: vec!["provgate".into()], mutating: vec!["provgate".into()] }
    }
}

impl Default for ManagedTlsConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            secret: "provgate-tls".into(),
            namespace: "provgate-system".into(),
            service: "provgate".into(),
            extra_names: Vec::new(),
            webhooks: WebhookNames::default(),
            validity: Duration::from_secs(90 * DAY),
            renew_before: Duration::from_secs(30 * DAY),
            ca_validity: Duration::from_secs(3650 * DAY),
            ca_renew_before: Duration::from_secs(365 * DAY),
            ca_handover: Duration::from_secs(5 * 60),
            check_interval: Duration::from_secs(60),
        }
    }
}

impl ManagedTlsConfig {
    /// Most `extraNames`.
    pub const MAX_EXTRA_NAMES: usize = 16;

    fn validate(&self) -> Result<(), String> {
        for (key, value) in [("secret", &self.secret), ("namespace", &self.namespace), ("service", &self.service)] {
            if value.is_empty() || value.len() > 253 {
                return Err(format!("tls.managed.{key} must be a name of 1 to 253 characters"));
            }
        }
        if self.extra_names.len() > Self::MAX_EXTRA_NAMES || self.extra_names.iter().any(|n| n.is_empty()) {
            return Err(format!("tls.managed.extraNames holds at most {} non-empty names", Self::MAX_EXTRA_NAMES));
        }
        if self.webhooks.validating.is_empty() && self.webhooks.mutating.is_empty() {
            return Err("tls.managed.webhooks names no webhook configuration to write the CA bundle into".into());
        }
        if self.validity.is_zero() || self.ca_validity.is_zero() || self.renew_before.is_zero() {
            return Err("tls.managed.validity, caValidity and renewBefore must be above 0".into());
        }
        if self.ca_handover >= self.ca_renew_before {
            return Err(
                "tls.managed.caHandover must be shorter than caRenewBefore, so a CA rollover ends before the CA does"
                    .into(),
            );
        }
        if self.check_interval < Duration::from_millis(100) || self.check_interval > self.renew_before {
            return Err("tls.managed.checkInterval must be at least 100ms and at most renewBefore".into());
        }
        Ok(())
    }
}

/// The decision log: where records go, how many may wait to be written, how files rotate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuditConfig {
    /// Where decision records go, one JSON object per line; standard output when unset.
    pub log: Option<PathBuf>,
    /// Records waiting to be written at most; more are dropped (and counted), never waited for.
    pub queue_size: usize,
    /// Bytes of records waiting to be written at most (records of large objects are large).
    pub queue_bytes: usize,
    /// The file is rotated (`audit.log` to `audit.log.1`) before it grows past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.N`); older ones are removed.
    pub keep: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { log: None, queue_size: 4096, queue_bytes: 16 << 20, max_bytes: 100 << 20, keep: 5 }
    }
}

impl AuditConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1 << 20).contains(&self.queue_size) {
            return Err(format!("audit.queueSize {} must be between 1 and 1048576", self.queue_size));
        }
        if !(1 << 20..=1 << 30).contains(&self.queue_bytes) {
            return Err(format!("audit.queueBytes {} must be between 1 MiB and 1 GiB", self.queue_bytes));
        }
        if self.max_bytes < 1024 {
            return Err(format!("audit.maxBytes {} must be at least 1024", self.max_bytes));
        }
        if !(1..=1000).contains(&self.keep) {
            return Err(format!("audit.keep {} must be between 1 and 1000", self.keep));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: TlsConfig::default(),
            policies: PathBuf::from("policies"),
            policy_poll: Duration::from_secs(2),
            deadline: Duration::from_secs(8),
            no_match: NoMatch::Deny,
            max_request_bytes: 8 * 1024 * 1024,
            server: ServerConfig::default(),
            audit: AuditConfig::default(),
            registries: RegistryConfig::default(),
            cache: CacheConfig::default(),
            evidence: crate::evidence::fetch::EvidenceConfig::default(),
            credentials: CredentialsConfig::default(),
            max_images_per_review: 256,
            max_object_bytes: 3 << 20,
            test_hooks: TestHooks::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Parse { file: PathBuf, line: usize, message: String },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.into(), source })?;
        Self::from_yaml(&text, file)
    }

    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                file: file.into(),
                line: e.location().map_or(1, |l| l.line()),
                message: e.to_string(),
            })?
        };
        config.validate().map_err(|message| ConfigError::Invalid { file: file.into(), message })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.deadline.is_zero() || self.deadline > Duration::from_secs(29) {
            return Err(format!(
                "deadline {:?} must be above 0 and below the webhook's 30 s maximum timeoutSeconds",
                self.deadline
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("tls.certFile and tls.keyFile must be set together".into());
        }
        if let Some(managed) = &self.tls.managed {
            if self.tls.cert_file.is_some() {
                return Err("tls.managed and tls.certFile/keyFile exclude each other: choose one source".into());
            }
            managed.validate()?;
        }
        self.credentials.validate()?;
        if self.max_request_bytes < 1024 || self.max_request_bytes > 1 << 30 {
            return Err("maxRequestBytes must be between 1024 and 1 GiB".into());
        }
        if self.server.max_request_bytes_in_flight < self.max_request_bytes {
            return Err(format!(
                "server.maxRequestBytesInFlight ({}) must be at least maxRequestBytes ({})",
                self.server.max_request_bytes_in_flight, self.max_request_bytes
            ));
        }
        self.audit.validate()?;
        self.server.validate()
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("server.maxConnections must be at least 1".into());
        }
        if self.max_concurrent_reviews == 0 {
            return Err("server.maxConcurrentReviews must be at least 1".into());
        }
        if self.header_read_timeout < Duration::from_millis(100) || self.header_read_timeout > Duration::from_secs(300)
        {
            return Err(format!(
                "server.headerReadTimeout {:?} must be between 100ms and 5m",
                self.header_read_timeout
            ));
        }
        if self.review_queue_timeout.is_zero() {
            return Err("server.reviewQueueTimeout must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::from_yaml("", Path::new("c.yaml")).unwrap();
        assert_eq!(c.deadline, Duration::from_secs(8));
        assert_eq!(c.no_match, NoMatch::Deny);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    }

    #[test]
    fn fields_parse() {
        let text = "listen: 0.0.0.0:9443\ndeadline: 2s 500ms\nnoMatch: warn\ntls:\n  certFile: /tls/tls.crt\n  keyFile: /tls/tls.key\naudit:\n  log: /var/log/provgate.jsonl\n";
        let c = Config::from_yaml(text, Path::new("c.yaml")).unwrap();
        assert_eq!(c.deadline, Duration::from_millis(2500));
        assert_eq!(c.no_match, NoMatch::Warn);
        assert_eq!(c.audit.log.unwrap(), PathBuf::from("/var/log/provgate.jsonl"));
    }

    #[test]
    fn audit_queue_and_rotation_parse_with_defaults() {
        let c = Config::from_yaml("", Path::new("c.yaml")).unwrap();
        let a = c.audit;
        assert_eq!((a.log, a.queue_size, a.queue_bytes, a.max_bytes, a.keep), (None, 4096, 16 << 20, 100 << 20, 5));
        let text = "audit:\n  log: /var/log/provgate/audit.log\n  queueSize: 64\n  queueBytes: 2097152\n  maxBytes: 4096\n  keep: 2\n";
        let a = Config::from_yaml(text, Path::new("c.yaml")).unwrap().audit;
        assert_eq!(a.log, Some(PathBuf::from("/var/log/provgate/audit.log")));
        assert_eq!((a.queue_size, a.queue_bytes, a.max_bytes, a.keep), (64, 2 << 20, 4096, 2));
    }

    #[test]
    fn an_absence_is_cached_briefly_and_what_was_found_for_the_artifacts_ttl() {
        let c = Config::from_yaml("", Path::new("c.yaml")).unwrap();
        assert_eq!((c.cache.artifacts_ttl, c.cache.missing_ttl), (Duration::from_secs(300), Duration::from_secs(5)));
        let c = Config::from_yaml("cache:\n  missingTtl: 1500ms\n", Path::new("c.yaml")).unwrap();
        assert_eq!(
            (c.cache.artifacts_ttl, c.cache.missing_ttl),
            (Duration::from_secs(300), Duration::from_millis(1500))
        );
        let e = Config::from_yaml("cache:\n  misingTtl: 1s\n", Path::new("c.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:2: "), "{e}");
    }

    #[test]
    fn server_limits_and_client_ca_parse_with_defaults() {
        let c = Config::from_yaml("", Path::new("c.yaml")).unwrap();
        assert_eq!(
            (c.server.max_connections, c.server.max_concurrent_reviews),
            (128, 64),
            "defaults fit the shipped memory limit"
        );
        assert_eq!(
            (c.server.header_read_timeout, c.server.review_queue_timeout),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        assert_eq!(c.tls.client_ca_file, None);
        let text = "tls:\n  clientCaFile: /client-ca/ca.crt\nserver:\n  maxConnections: 32\n  headerReadTimeout: 3s\n  maxConcurrentReviews: 8\n  reviewQueueTimeout: 500ms\n";
        let c = Config::from_yaml(text, Path::new("c.yaml")).unwrap();
        assert_eq!(c.tls.client_ca_file.unwrap(), PathBuf::from("/client-ca/ca.crt"));
        assert_eq!((c.server.max_connections, c.server.max_concurrent_reviews), (32, 8));
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.server.review_queue_timeout, Duration::from_millis(500));
    }

    #[test]
    fn the_client_auth_component_config_is_the_shipped_one_with_a_client_ca() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let base = Config::from_file(&deploy.join("provgate.yaml")).unwrap();
        let with_ca = Config::from_file(&deploy.join("optional/client-auth/provgate.yaml")).unwrap();
        assert_eq!(with_ca.tls.client_ca_file, Some(PathBuf::from("/client-ca/ca.crt")));
        assert_eq!(base.tls.client_ca_file, None);
        let mut same = with_ca.clone();
        same.tls.client_ca_file = None;
        assert_eq!(format!("{same:?}"), format!("{base:?}"), "keep deploy/optional/client-auth/provgate.yaml in step");
        let defaults = ServerConfig::default();
        assert_eq!(format!("{:?}", base.server), format!("{defaults:?}"), "deploy/provgate.yaml shows the defaults");
    }

    #[test]
    fn managed_tls_parses_with_defaults_and_excludes_files() {
        let c = Config::from_yaml("tls:\n  managed: {}\n", Path::new("c.yaml")).unwrap();
        let m = c.tls.managed.unwrap();
        assert_eq!(m, ManagedTlsConfig::default());
        assert_eq!(
            (m.secret.as_str(), m.namespace.as_str(), m.service.as_str()),
            ("provgate-tls", "provgate-system", "provgate")
        );
        assert_eq!(
            (m.webhooks.validating, m.webhooks.mutating),
            (vec!["provgate".to_owned()], vec!["provgate".to_owned()])
        );
        assert_eq!((m.validity, m.renew_before), (Duration::from_secs(90 * 86_400), Duration::from_secs(30 * 86_400)));
        let text = "tls:\n  managed:\n    secret: s\n    extraNames: [127.0.0.1]\n    webhooks: {validating: [v], mutating: []}\n    validity: 1h\n    renewBefore: 2h\n    checkInterval: 500ms\n";
        let m = Config::from_yaml(text, Path::new("c.yaml")).unwrap().tls.managed.unwrap();
        assert_eq!((m.secret.as_str(), m.extra_names.len(), m.webhooks.mutating.len()), ("s", 1, 0));
        assert_eq!(m.check_interval, Duration::from_millis(500));
        let shipped = Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/provgate.yaml")).unwrap();
        assert_eq!(
            shipped.tls.managed,
            Some(ManagedTlsConfig::default()),
            "deploy/ ships managed TLS with the defaults"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let table = [
            ("deadline: 8s\nnoMatch: maybe\n", "c.yaml:2: "),
            ("listen: 1.2.3.4:5\ncolour: red\n", "c.yaml:2: "),
            ("deadline: 60s\n", "below the webhook"),
            ("deadline: 0s\n", "above 0"),
            ("tls:\n  certFile: a.pem\n", "set together"),
            ("server:\n  maxConnections: 0\n", "server.maxConnections must be at least 1"),
            ("server:\n  maxConcurrentReviews: 0\n", "server.maxConcurrentReviews must be at least 1"),
            ("server:\n  headerReadTimeout: 10ms\n", "between 100ms and 5m"),
            ("server:\n  reviewQueueTimeout: 0s\n", "reviewQueueTimeout must be above 0"),
            ("server:\n  maxConections: 10\n", "c.yaml:2: "),
            ("server:\n  maxRequestBytesInFlight: 1048576\n", "must be at least maxRequestBytes (8388608)"),
            ("audit:\n  queueSize: 0\n", "audit.queueSize 0 must be between 1 and 1048576"),
            ("audit:\n  queueBytes: 1000\n", "audit.queueBytes 1000 must be between 1 MiB and 1 GiB"),
            ("audit:\n  maxBytes: 100\n", "audit.maxBytes 100 must be at least 1024"),
            ("audit:\n  keep: 0\n", "audit.keep 0 must be between 1 and 1000"),
            ("audit:\n  keepp: 3\n", "c.yaml:2: "),
            ("tls:\n  certFile: a\n  keyFile: b\n  managed: {}\n", "exclude each other"),
            ("tls:\n  managed: {secret: \"\"}\n", "tls.managed.secret must be a name"),
            ("tls:\n  managed: {webhooks: {validating: [], mutating: []}}\n", "names no webhook configuration"),
            ("tls:\n  managed: {caHandover: 400d}\n", "caHandover must be shorter than caRenewBefore"),
            ("tls:\n  managed: {checkInterval: 1ms}\n", "checkInterval must be at least 100ms"),
            ("tls:\n  managed: {validity: 0s}\n", "must be above 0"),
            ("tls:\n  managed: {sercet: x}\n", "c.yaml:2: "),
        ];
        for (text, needle) in table {
            let e = Config::from_yaml(text, Path::new("c.yaml")).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }
}
