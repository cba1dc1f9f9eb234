//! `provgate verify IMAGE... [--volume IMAGE]...`: the webhook's engine, once, from a terminal or CI. The images are
//! judged as the containers (and image volumes) of a Pod in the given namespace, so the answer is exactly what
//! admission would say.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::artifact::{Artifacts, Layer, Origin};
use crate::decide::{Decision, ImageDecision, Verdict};
use crate::engine::Engine;
use crate::gather::{Gatherer, Inspected};
use crate::images::ImageRef;
use crate::policy::{LoadErrors, PolicySet, load_sources};
use crate::request::{GroupVersionKind, Operation, Request, UserInfo};

/// What `verify --output json` prints for one image.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    pub image: String,
    /// Judged as an image volume (`--volume`): mounted, never run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub volume: bool,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub platforms: Vec<String>,
    pub artifacts: Vec<ArtifactReport>,
    /// Why the registry could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_error: Option<String>,
    pub policies: Vec<String>,
    /// What verified, by which authority and key or identity.
    pub verified: Vec<String>,
    pub outcome: String,
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactReport {
    /// `signature`, `attestation` or `bundle`.
    pub kind: &'static str,
    /// `sig-tag`, `att-tag` or `referrer`.
    pub source: &'static str,
    pub media_type: String,
    pub digest: String,
    pub for_digest: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub decision: Verdict,
    pub images: Vec<ImageReport>,
}

impl Report {
    /// 0 admit, 1 deny.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.decision == Verdict::Deny)
    }

    /// A readable summary, one block per image.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for i in &self.images {
            let mounted = if i.volume { " (image volume)" } else { "" };
            out.push_str(&format!("{}  {}{mounted}\n", i.outcome.to_uppercase(), i.image));
            if let Some(digest) = &i.digest {
                out.push_str(&format!("  digest     {digest}\n"));
            }
            for p in &i.platforms {
                out.push_str(&format!("  platform   {p}\n"));
            }
            for a in &i.artifacts {
                out.push_str(&format!("  {:<10} {} {} ({})\n", a.kind, a.source, a.digest, a.media_type));
            }
            if let Some(e) = &i.registry_error {
                out.push_str(&format!("  registry   {e}\n"));
            }
            if !i.policies.is_empty() {
                out.push_str(&format!("  policies   {}\n", i.policies.join(", ")));
            }
            for v in &i.verified {
                out.push_str(&format!("  verified   {v}\n"));
            }
            if let Some(m) = &i.message {
                out.push_str(&format!("  why        {m}\n"));
            }
        }
        out.push_str(&format!("decision: {}\n", json!(self.decision).as_str().unwrap_or_default()));
        out
    }
}

/// The policy `verify --key REF` stands for: every image must carry a signature by that key.
pub fn key_policy(key: &str) -> Result<PolicySet, LoadErrors> {
    let text = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: key}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: key, key: {}}}]\n  require: {{signature: true}}\n",
        serde_json::Value::String(key.to_owned())
    );
    load_sources(&[(std::path::PathBuf::from("--key"), text)])
}

/// Judges `images` (as containers) and `volumes` (as image volumes) in `namespace`, and inspects each one's registry
/// data for the report.
pub async fn verify(
    engine: &Engine,
    gatherer: &Gatherer,
    images: &[String],
    volumes: &[String],
    namespace: &str,
) -> Report {
    let containers: Vec<_> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    let mounts: Vec<_> = volumes
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("v{i}"), "image": {"reference": image}}))
        .collect();
    let request = Request {
        uid: "provgate-verify".into(),
        kind: GroupVersionKind { group: String::new(), version: "v1".into(), kind: "Pod".into() },
        sub_resource: None,
        name: Some("provgate-verify".into()),
        namespace: Some(namespace.to_owned()),
        operation: Operation::Create,
        user_info: UserInfo { username: "provgate-verify".into(), groups: vec![] },
        object: Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "provgate-verify", "namespace": namespace}, "spec": {"containers": containers, "volumes": mounts}}),
        ),
        old_object: None,
        dry_run: Some(true),
        read_from_bytes: None,
    };
    let decision = engine.review(&request, tokio::time::Instant::now()).await;
    let deadline = tokio::time::Instant::now() + engine.deadline;
    let mut reports = Vec::with_capacity(images.len() + volumes.len());
    let all = images.iter().map(|i| (i, false)).chain(volumes.iter().map(|v| (v, true)));
    for (i, (image, volume)) in all.enumerate() {
        let judged = decision.images.get(i);
        let inspected = match ImageRef::parse(image) {
            Ok(r) => Some(tokio::time::timeout_at(deadline, gatherer.inspect(&r, deadline)).await),
            Err(_) => None,
        };
        let mut report = report(image, judged, &decision, inspected, engine.deadline);
        report.volume = volume;
        reports.push(report);
    }
    Report { decision: decision.verdict(), images: reports }
}

type Inspection = Result<Result<Inspected, crate::reason::Reason>, tokio::time::error::Elapsed>;

fn report(
    image: &str,
    judged: Option<&ImageDecision>,
    decision: &Decision,
    inspected: Option<Inspection>,
    budget: Duration,
) -> ImageReport {
    let mut r = ImageReport {
        image: image.to_owned(),
        volume: false,
        reference: judged.and_then(|j| j.image.as_ref()).map(ToString::to_string),
        digest: None,
        platforms: vec![],
        artifacts: vec![],
        registry_error: None,
        policies: judged.map(|j| j.policies.clone()).unwrap_or_default(),
        verified: judged.map(|j| j.verified.iter().map(ToString::to_string).collect()).unwrap_or_default(),
        outcome: judged
            .map_or_else(|| "denied".to_owned(), |j| json!(j.outcome).as_str().unwrap_or_default().to_owned()),
        reasons: judged.map(|j| j.failures.iter().map(|f| f.reason.code().to_owned()).collect()).unwrap_or_default(),
        message: judged.filter(|j| !j.failures.is_empty()).map(ImageDecision::explain),
    };
    if judged.is_none() {
        r.message = decision.denial_message();
    }
    match inspected {
        Some(Ok(Ok(evidence))) => {
            r.digest = Some(evidence.digest.to_string());
            r.platforms = evidence.platforms.iter().map(ToString::to_string).collect();
            r.artifacts = artifact_reports(&evidence.artifacts, &evidence.digest.to_string());
        }
        Some(Ok(Err(reason))) => r.registry_error = Some(reason.to_string()),
        Some(Err(_)) => r.registry_error = Some(crate::reason::Reason::DeadlineExceeded(budget).to_string()),
        None => {}
    }
    r
}

fn artifact_reports(artifacts: &Artifacts, for_digest: &str) -> Vec<ArtifactReport> {
    let one = |kind, layer: &Layer| ArtifactReport {
        kind,
        source: match layer.origin {
            Origin::SigTag => "sig-tag",
            Origin::AttTag => "att-tag",
            Origin::Referrer { .. } => "referrer",
        },
        media_type: layer.media_type.clone(),
        digest: layer.digest.to_string(),
        for_digest: for_digest.to_owned(),
    };
    let signatures = artifacts.signatures.iter().map(|l| one("signature", l));
    let attestations = artifacts.attestations.iter().map(|l| one("attestation", l));
    let bundles = artifacts.bundles.iter().map(|l| one("bundle", l));
    signatures.chain(attestations).chain(bundles).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_policy_requires_a_signature_by_that_key() {
        let set = key_policy("k8s://provgate-system/chains-public-key").unwrap();
        let policy = &set.policies()[0];
        assert!(policy.requirements.signature.is_some());
        assert_eq!(policy.authorities.len(), 1);
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vectors/tekton-chains/cosign.pub"
        ))
        .unwrap();
        assert!(key_policy(&pem).is_ok(), "inline PEM, newlines and all");
        assert!(key_policy("/nonexistent/cosign.pub").unwrap_err().to_string().contains("/nonexistent/cosign.pub"));
    }
}
