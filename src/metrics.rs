//! The Prometheus metrics of the admin port: what each part of the pipeline counts, registered in one place, and
//! the state of policies and key watches read at scrape time.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::decide::Decision;
use crate::gather::GatherMetrics;
use crate::keys::{KeyState, KeyStore};
use crate::policy::{Mode, PolicyStore};
use crate::registry::{MAX_OTHER_REGISTRIES, RegistryMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    /// The first reason of the strictest mode's failures (`none` without failures).
    reason: &'static str,
    /// The strictest mode among the failures: `enforce`, `warn`, `audit`, or `none`.
    mode: &'static str,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Histogram,
    /// What the gatherer counts (verifications, cache lookups, verification time, fetches in flight, per-image time).
    pub gather: GatherMetrics,
    /// What the registry client counts (requests by registry, kind and status).
    pub registries: Arc<RegistryMetrics>,
    /// What the decision log counts (records written, records dropped).
    pub audit: crate::audit::AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(GatherMetrics::default(), RegistryMetrics::default())
    }
}

impl Metrics {
    /// The registry of every metric, with the gatherer's `gather` counters and the registry client's `registries`.
    pub fn new(gather: GatherMetrics, registries: RegistryMetrics) -> Self {
        let mut registry = Registry::with_prefix("provgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "admission_decisions",
            "Admission decisions by verdict, the strictest mode among the failures, and that mode's first reason",
            decisions.clone(),
        );
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let latency = Histogram::new(buckets);
        registry.register("admission_duration_seconds", "Time to answer one AdmissionReview", latency.clone());
        registry.register(
            "verifications",
            "Signature and attestation verifications computed, one per (digest, authority) not found in the cache",
            gather.verifications.clone(),
        );
        registry.register("cache_requests", "Cache lookups by cache and result (hit, miss)", gather.cache.clone());
        registry.register(
            "verification_duration_seconds",
            "Time to verify one digest's artifacts under one authority",
            gather.verification_seconds.clone(),
        );
        registry.register(
            "image_verification_duration_seconds",
            "Time from the start of a review's gathering to one image's evidence (or failure) being ready: registry \
             reads and verification, cached or not, per image gathered",
            gather.image_seconds.clone(),
        );
        registry.register(
            "fetches_in_flight",
            "Images being fetched from registries now (each holding one of cache.maxConcurrentFetches slots)",
            gather.fetches_in_flight.clone(),
        );
        let registries = Arc::new(registries);
        registry.register(
            "registry_requests",
            format!(
                "HTTP requests to registries by registry (hosts of registries.hosts and the first {MAX_OTHER_REGISTRIES} \
                 others; the rest are `other`), kind and status"
            ),
            registries.requests(),
        );
        let audit = crate::audit::AuditMetrics::default();
        registry.register("audit_records_written", "Decision records written to the audit log", audit.written.clone());
        registry.register(
            "audit_records_dropped",
            "Decision records dropped: the audit queue was full, or writing failed",
            audit.dropped.clone(),
        );
        Self { registry, decisions, latency, gather, registries, audit }
    }

    /// Counts `decision`, which took `seconds` to reach.
    pub fn observe(&self, decision: &Decision, seconds: f64) {
        let decision = decision_labels(decision);
        self.decisions.get_or_create(&decision).inc();
        self.latency.observe(seconds);
    }

    /// Exposes the policy store's rejected loads, whether its last load succeeded, and the generation it serves.
    pub fn register_policies(&mut self, store: Arc<PolicyStore>) {
        self.registry.register(
            "policy_load_errors",
            "Policy loads rejected (at start or on a change of the files); the previous set stays active",
            store.load_errors(),
        );
        self.registry.register_collector(Box::new(Policies(store)));
    }

    /// Exposes the state of each watched key Secret.
    pub fn register_keys(&mut self, keys: KeyStore) {
        self.registry.register_collector(Box::new(Keys(keys)));
    }

    /// Exposes the serving certificate's expiry (kept up to date by the TLS reloader).
    pub fn register_certificate_expiry(&mut self, gauge: prometheus_client::metrics::gauge::Gauge) {
        self.registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires, in Unix seconds",
            gauge,
        );
    }

    /// Exposes the count of Kubernetes Events dropped (queue full, or too many live series).
    pub fn register_events_dropped(&mut self, counter: prometheus_client::metrics::counter::Counter) {
        self.registry.register(
            "events_dropped",
            "Kubernetes Events dropped: queue full or too many live series",
            counter,
        );
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// The labels of one decision: its verdict, and the strictest mode among its failures with that mode's first
/// reason (as `decide` combines them: a request that could not be judged is an enforced failure).
fn decision_labels(decision: &Decision) -> DecisionLabels {
    let verdict = decision.verdict().as_str();
    let strictest = match &decision.request_failure {
        Some(reason) => Some((Mode::Enforce, reason.code())),
        None => [Mode::Enforce, Mode::Warn, Mode::Audit].into_iter().find_map(|mode| {
            let failures = decision.images.iter().flat_map(|i| i.failures.iter());
            failures.filter(|f| f.mode == mode).map(|f| (mode, f.reason.code())).next()
        }),
    };
    match strictest {
        Some((mode, reason)) => DecisionLabels { decision: verdict, reason, mode: mode.as_str() },
        None => DecisionLabels { decision: verdict, reason: "none", mode: "none" },
    }
}

/// The policy store, read at each scrape.
#[derive(Debug)]
struct Policies(Arc<PolicyStore>);

impl Collector for Policies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let loaded = self.0.current();
        let successful = ConstGauge::new(i64::from(loaded.is_some() && self.0.last_error().is_none()));
        let help = "1 when the last policy load succeeded, 0 while the files are rejected or none loaded yet";
        let metric = encoder.encode_descriptor("policy_last_load_successful", help, None, MetricType::Gauge)?;
        successful.encode(metric)?;
        if let Some(set) = loaded {
            let info = Info::new(vec![("generation".to_owned(), set.generation().to_owned())]);
            let help = "The policy set being enforced, by generation (a hash of the policy files)";
            let metric = encoder.encode_descriptor("policy_set", help, None, MetricType::Info)?;
            info.encode(metric)?;
        }
        Ok(())
    }
}

/// The key store's Secret watches, read at each scrape (one series per watched key and state; the watched
/// Secrets are those the policies name).
struct Keys(KeyStore);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    namespace: String,
    secret: String,
    key: String,
    state: &'static str,
}

impl Collector for Keys {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let help = "Each watched key Secret's state (pending, loaded, missing, error): 1 for the state it is in";
        let mut metric = encoder.encode_descriptor("key_watch_state", help, None, MetricType::Gauge)?;
        for (r, now) in self.0.watch_states() {
            for state in KeyState::ALL {
                let labels = KeyLabels {
                    namespace: r.namespace.clone(),
                    secret: r.name.clone(),
                    key: r.key.clone(),
                    state: state.as_str(),
                };
                ConstGauge::new(i64::from(state == now)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Failure, ImageDecision, Outcome};
    use crate::reason::Reason;
    use crate::registry::RegistryError;

    /// The samples of `text` (parsed as Prometheus text) whose metric is `name`.
    fn samples(text: &str, name: &str) -> Vec<prometheus_parse::Sample> {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape.samples.into_iter().filter(|s| s.metric == name).collect()
    }

    fn value(s: &prometheus_parse::Sample) -> f64 {
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        }
    }

    /// An image decision with `outcome` and failures of these (mode, reason) pairs.
    fn image(outcome: Outcome, failures: &[(Mode, Reason)]) -> ImageDecision {
        ImageDecision {
            field: "spec.containers[0].image".into(),
            raw: "r.example/app:1".into(),
            image: None,
            policies: Vec::new(),
            outcome,
            failures: failures
                .iter()
                .map(|(mode, reason)| Failure { policy: Some("p".into()), mode: *mode, reason: reason.clone() })
                .collect(),
            verified: Vec::new(),
            written_with_digest: false,
        }
    }

    #[test]
    fn decisions_are_counted_by_verdict_mode_and_that_modes_first_reason() {
        let m = Metrics::default();
        let deadline = Reason::DeadlineExceeded(std::time::Duration::from_secs(8));
        let no_policy = Reason::NoPolicy { image: "i".into(), namespace: "n".into(), no_match: "warn" };
        let internal = Reason::InternalError;
        m.observe(&Decision::deny_request(Reason::PoliciesNotLoaded { why: "x".into() }), 0.01);
        m.observe(&Decision::allow_without_images(), 0.001);
        // An audited failure first, then a warned one, then an enforced one on another image: the enforced wins.
        let images = vec![
            image(Outcome::Warned, &[(Mode::Audit, internal.clone()), (Mode::Warn, no_policy.clone())]),
            image(Outcome::Denied, &[(Mode::Enforce, deadline.clone())]),
        ];
        m.observe(&Decision { request_failure: None, images }, 0.02);
        let images = vec![image(Outcome::Warned, &[(Mode::Audit, internal.clone()), (Mode::Warn, no_policy)])];
        m.observe(&Decision { request_failure: None, images }, 0.02);
        let images = vec![image(Outcome::Audited, &[(Mode::Audit, internal)])];
        m.observe(&Decision { request_failure: None, images }, 0.02);
        let text = m.render();
        let mut got: Vec<(String, String, String, f64)> = samples(&text, "provgate_admission_decisions_total")
            .iter()
            .map(|s| {
                let label = |k: &str| s.labels.get(k).unwrap_or_default().to_owned();
                (label("decision"), label("reason"), label("mode"), value(s))
            })
            .collect();
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let want = [
            ("allow", "internal-error", "audit", 1.0),
            ("allow", "none", "none", 1.0),
            ("deny", "deadline-exceeded", "enforce", 1.0),
            ("deny", "policies-not-loaded", "enforce", 1.0),
            ("warn", "no-policy", "warn", 1.0),
        ];
        let want: Vec<_> = want.iter().map(|(d, r, m, v)| (d.to_string(), r.to_string(), m.to_string(), *v)).collect();
        assert_eq!(got, want, "{text}");
        assert!(text.contains("provgate_admission_duration_seconds_count 5"), "{text}");
    }

    /// The registry label is bounded: a thousand hosts named in Pods make the configured hosts, the first
    /// [`MAX_OTHER_REGISTRIES`] others and `other`, not a thousand series.
    #[test]
    fn a_thousand_registry_hosts_do_not_make_a_thousand_series() {
        use crate::registry::{RequestKind as Kind, RequestStatus as Status};
        let m = Metrics::new(GatherMetrics::default(), RegistryMetrics::new(["registry.example.com"]));
        for i in 0..1_000 {
            m.registries.count(&format!("attacker-{i}.example"), Kind::TagHead, Status::Http(200));
        }
        for _ in 0..3 {
            m.registries.count("registry.example.com", Kind::Blob, Status::Http(200));
        }
        let timed_out = RegistryError::TimedOut { registry: "r".into(), what: "w".into() };
        m.registries.count("registry.example.com", Kind::Token, Status::of_error(&timed_out, None));
        let text = m.render();
        let series = samples(&text, "provgate_registry_requests_total");
        let registries: std::collections::BTreeSet<&str> =
            series.iter().map(|s| s.labels.get("registry").unwrap()).collect();
        assert_eq!(registries.len(), MAX_OTHER_REGISTRIES + 2, "{registries:?}");
        assert_eq!(series.len(), MAX_OTHER_REGISTRIES + 3, "{text}");
        let find = |registry: &str, kind: &str, status: &str| {
            series
                .iter()
                .find(|s| {
                    s.labels.get("registry") == Some(registry)
                        && s.labels.get("kind") == Some(kind)
                        && s.labels.get("status") == Some(status)
                })
                .map(value)
        };
        assert_eq!(find("other", "tag-head", "200"), Some((1_000 - MAX_OTHER_REGISTRIES) as f64));
        assert_eq!(find("attacker-0.example", "tag-head", "200"), Some(1.0), "the first others keep their name");
        assert_eq!(find("attacker-999.example", "tag-head", "200"), None);
        assert_eq!(find("registry.example.com", "blob", "200"), Some(3.0), "configured hosts always have a label");
        assert_eq!(find("registry.example.com", "token", "timeout"), Some(1.0));
    }

    #[test]
    fn policy_loads_errors_and_generation_are_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let good = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: a}\nspec:\n  match: {images: [\"**\"]}\n";
        let store = Arc::new(PolicyStore::default());
        let mut m = Metrics::default();
        m.register_policies(store.clone());
        let scrape = |m: &Metrics| {
            let text = m.render();
            let one = |name: &str| samples(&text, name).first().map(value);
            let generation = samples(&text, "provgate_policy_set_info")
                .first()
                .map(|s| s.labels.get("generation").unwrap().to_owned());
            (one("provgate_policy_load_errors_total"), one("provgate_policy_last_load_successful"), generation)
        };
        assert_eq!(scrape(&m), (Some(0.0), Some(0.0), None), "nothing loaded yet");
        std::fs::write(dir.path().join("a.yaml"), good).unwrap();
        let first = store.reload(dir.path()).unwrap().generation().to_owned();
        assert_eq!(scrape(&m), (Some(0.0), Some(1.0), Some(first.clone())));
        std::fs::write(dir.path().join("a.yaml"), good.replace("images", "imagez")).unwrap();
        store.reload(dir.path()).unwrap_err();
        assert_eq!(scrape(&m), (Some(1.0), Some(0.0), Some(first.clone())), "the previous set stays");
        std::fs::write(dir.path().join("a.yaml"), good.replace("name: a", "name: b")).unwrap();
        let second = store.reload(dir.path()).unwrap().generation().to_owned();
        assert_ne!(first, second);
        assert_eq!(scrape(&m), (Some(1.0), Some(1.0), Some(second)));
    }
}
