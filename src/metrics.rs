//! Prometheus metrics: decisions by verdict and reason, and review latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::decide::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Histogram,
    /// What the gatherer counts (verifications, cache lookups, verification time).
    pub gather: crate::gather::GatherMetrics,
    /// What the decision log counts (records written, records dropped).
    pub audit: crate::audit::AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(crate::gather::GatherMetrics::default())
    }
}

impl Metrics {
    /// The registry of every metric, with the gatherer's `gather` counters.
    pub fn new(gather: crate::gather::GatherMetrics) -> Self {
        let mut registry = Registry::with_prefix("provgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("admission_decisions", "Admission decisions by verdict and first reason", decisions.clone());
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
        let audit = crate::audit::AuditMetrics::default();
        registry.register("audit_records_written", "Decision records written to the audit log", audit.written.clone());
        registry.register(
            "audit_records_dropped",
            "Decision records dropped: the audit queue was full, or writing failed",
            audit.dropped.clone(),
        );
        Self { registry, decisions, latency, gather, audit }
    }
}

impl Metrics {
    pub fn observe(&self, decision: &Decision, seconds: f64) {
        let verdict = decision.verdict().as_str();
        let reason = decision.reason_codes().first().copied().unwrap_or("none");
        self.decisions.get_or_create(&DecisionLabels { decision: verdict, reason }).inc();
        self.latency.observe(seconds);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;

    #[test]
    fn decisions_are_counted_by_verdict_and_reason() {
        let m = Metrics::default();
        m.observe(&Decision::deny_request(Reason::PoliciesNotLoaded { why: "x".into() }), 0.01);
        m.observe(&Decision::allow_without_images(), 0.001);
        let text = m.render();
        assert!(
            text.contains(r#"provgate_admission_decisions_total{decision="deny",reason="policies-not-loaded"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"provgate_admission_decisions_total{decision="allow",reason="none"} 1"#), "{text}");
        assert!(text.contains("provgate_admission_duration_seconds_count 2"), "{text}");
    }
}
