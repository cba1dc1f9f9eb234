//! The manifests in `deploy/`: every document parses, the shipped config and policies load with provgate's own
//! loaders, and the webhook keeps the safety properties DESIGN.md asks for (fail closed, bounded, self-excluded).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every YAML document of every file the kustomization lists, by kind.
fn documents() -> Vec<Value> {
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap()).unwrap();
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(deploy().join(file.as_str().unwrap())).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            docs.push(Value::deserialize(doc).unwrap());
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/"))
}

#[test]
fn the_webhook_fails_closed_within_its_timeout_and_excludes_itself() {
    let docs = documents();
    let webhook = &find(&docs, "ValidatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(webhook["clientConfig"]["service"]["path"], "/validate");
    let expr = &webhook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!((expr["key"].as_str(), expr["operator"].as_str()), (Some("kubernetes.io/metadata.name"), Some("NotIn")));
    for ns in ["kube-system", "kube-public", "kube-node-lease", "provgate-system", "tekton-pipelines", "tekton-chains"]
    {
        assert!(expr["values"].as_array().unwrap().contains(&json!(ns)), "{ns} must be excluded");
    }
    let ignore = &webhook["namespaceSelector"]["matchExpressions"][1];
    assert_eq!(
        (ignore["key"].as_str(), ignore["operator"].as_str(), &ignore["values"]),
        (Some("provgate.dev/ignore"), Some("NotIn"), &json!(["true"])),
        "namespaces labelled provgate.dev/ignore=true are not judged"
    );
    let resources: Vec<&str> = webhook["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()))
        .collect();
    for r in [
        "pods",
        "pods/ephemeralcontainers",
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
    ] {
        assert!(resources.contains(&r), "{r} is not sent to provgate");
    }
    for rule in webhook["rules"].as_array().unwrap() {
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
    }

    let config = provgate::config::Config::from_yaml(
        &std::fs::read_to_string(deploy().join("provgate.yaml")).unwrap(),
        Path::new("deploy/provgate.yaml"),
    )
    .unwrap();
    let timeout = webhook["timeoutSeconds"].as_u64().unwrap();
    assert!(config.deadline.as_secs() < timeout, "the internal deadline must end before the apiserver gives up");
    assert_eq!(
        config.no_match,
        provgate::decide::NoMatch::Warn,
        "the shipped rollout starts in warn, as the README says"
    );
}

#[test]
fn the_deployment_is_redundant_unprivileged_and_ready_only_when_policies_load() {
    let docs = documents();
    let deployment = find(&docs, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["serve", "--config", "/etc/provgate/provgate.yaml"]);
    let mounts: Vec<&str> =
        container["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    let config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy().join("provgate.yaml")).unwrap()).unwrap();
    let path = config["policies"].as_str().unwrap();
    assert!(mounts.iter().any(|m| path.starts_with(m)), "{path} is not mounted");
    assert!(config["tls"]["managed"].is_object(), "deploy/ manages its own serving certificate");
    assert!(!mounts.contains(&"/tls"), "managed TLS reads its Secret through the API, not a volume");
}

#[test]
fn rbac_reads_secrets_in_its_own_namespace_only_by_default() {
    let docs = documents();
    let role = find(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "provgate-system");
    // Cluster-wide, provgate may only write Events, get/patch its own webhook configurations by name, and read
    // ImagePolicy objects (checked below); reads of Secrets are opt-in (deploy/optional).
    let cluster_roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(cluster_roles.len(), 3, "Events, the webhook configurations' caBundle, ImagePolicy objects");
    let role = |name: &str| *cluster_roles.iter().find(|r| r["metadata"]["name"] == name).unwrap();
    assert_eq!(
        role("provgate-events")["rules"],
        json!([{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]),
        "Events: create and patch only"
    );
    for rule in role("provgate-webhook-ca")["rules"].as_array().unwrap() {
        assert_eq!(rule["resourceNames"], json!(["provgate"]), "{rule}");
        assert_eq!(rule["verbs"], json!(["get", "patch"]), "{rule}");
    }
    for binding in docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding") {
        assert!(cluster_roles.iter().any(|r| r["metadata"]["name"] == binding["roleRef"]["name"]), "{binding}");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "provgate", "namespace": "provgate-system"}])
        );
    }
    // Managed TLS: every Secret verb but create names the one Secret; create cannot be narrowed by name.
    let tls = docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "provgate-tls").unwrap();
    for rule in tls["rules"].as_array().unwrap() {
        assert_eq!(rule["resources"], json!(["secrets"]));
        if rule["verbs"] != json!(["create"]) {
            assert_eq!(rule["resourceNames"], json!(["provgate-tls"]), "{rule}");
        }
    }
    for role in docs.iter().filter(|d| d["kind"] == "ClusterRole") {
        let text = role["rules"].to_string();
        assert!(!text.contains("secrets"), "cluster-wide reads of Secrets are opt-in (deploy/optional): {role}");
    }
}

/// `deploy/imagepolicy-crd.yaml` is what `ImagePolicy::crd()` generates; `PROVGATE_WRITE_CRD=1` rewrites it.
#[test]
fn the_image_policy_crd_is_generated_from_the_code_and_its_rbac_is_the_narrowest() {
    use kube::CustomResourceExt as _;
    let crd = provgate::policy::ImagePolicy::crd();
    let generated = format!(
        "# Generated from src/policy/model.rs: PROVGATE_WRITE_CRD=1 cargo test --test deploy crd\n{}",
        serde_yaml_ng::to_string(&crd).unwrap()
    );
    let path = deploy().join("imagepolicy-crd.yaml");
    if std::env::var_os("PROVGATE_WRITE_CRD").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        generated,
        "deploy/imagepolicy-crd.yaml differs from the code: PROVGATE_WRITE_CRD=1 cargo test --test deploy crd"
    );
    assert_eq!(crd.spec.scope, "Cluster", "like policy-controller's ClusterImagePolicy");
    let docs = documents();
    assert!(docs.iter().any(|d| d["kind"] == "CustomResourceDefinition"), "the kustomization ships the CRD");
    let role = docs.iter().find(|d| d["metadata"]["name"] == "provgate-imagepolicies" && d["kind"] == "ClusterRole");
    assert_eq!(
        role.unwrap()["rules"],
        json!([
            {"apiGroups": ["provgate.dev"], "resources": ["imagepolicies"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["provgate.dev"], "resources": ["imagepolicies/status"], "verbs": ["update", "patch"]},
        ])
    );
}

#[test]
fn the_shipped_policies_load() {
    let set = provgate::policy::load(&deploy().join("policies")).unwrap();
    assert_eq!(set.policies().len(), 1);
    assert!(set.policies()[0].needs_evidence());
    assert_eq!(set.policies()[0].mode, provgate::policy::Mode::Warn, "the starter policy warns first");
}

#[test]
fn the_mutating_webhook_pins_what_the_validating_one_judges_and_is_reinvoked() {
    let docs = documents();
    let validating = &find(&docs, "ValidatingWebhookConfiguration")["webhooks"][0];
    let mutating = &find(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(mutating["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(mutating["reinvocationPolicy"], "IfNeeded", "images added by later mutating webhooks are pinned too");
    for key in ["rules", "namespaceSelector", "timeoutSeconds", "failurePolicy", "sideEffects", "matchPolicy"] {
        assert_eq!(mutating[key], validating[key], "{key} differs between the two webhook configurations");
    }
    assert_eq!(mutating["admissionReviewVersions"], json!(["v1"]));
    let (m, v) = (&mutating["clientConfig"]["service"], &validating["clientConfig"]["service"]);
    assert_eq!((&m["namespace"], &m["name"], &m["port"]), (&v["namespace"], &v["name"], &v["port"]));
}
