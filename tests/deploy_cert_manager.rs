//! `deploy/overlays/cert-manager`: every document parses, the Issuer/Certificate chain is whole (self-signed
//! Issuer → CA Certificate → CA Issuer → serving Certificate for the Service's names), both webhook kinds get
//! `cert-manager.io/inject-ca-from` naming that Certificate, and provgate then reads the mounted Secret's files
//! instead of managing its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn overlay() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/cert-manager")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

#[test]
fn the_overlay_issues_the_serving_certificate_from_its_own_ca_and_injects_it_into_both_webhooks() {
    let kustomization = &yaml_docs(&overlay().join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Component");
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        docs.extend(yaml_docs(&overlay().join(file.as_str().unwrap())));
    }
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "provgate-system", "{doc}");
    }

    // The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    let selfsigned = docs.iter().find(|d| d["kind"] == "Issuer" && d["spec"]["selfSigned"].is_object()).unwrap();
    let ca_cert = docs.iter().find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] == true).unwrap();
    assert_eq!(ca_cert["spec"]["issuerRef"]["name"], selfsigned["metadata"]["name"]);
    let ca_issuer = docs.iter().find(|d| d["kind"] == "Issuer" && d["spec"]["ca"].is_object()).unwrap();
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], ca_cert["spec"]["secretName"]);
    let serving = docs.iter().find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true).unwrap();
    assert_eq!(serving["spec"]["issuerRef"]["name"], ca_issuer["metadata"]["name"]);
    let dns: Vec<String> =
        serving["spec"]["dnsNames"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
    let service = &yaml_docs(&overlay().join("../../service.yaml"))[0];
    let names = provgate::certs::service_names(
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap(),
    );
    assert_eq!(dns, names, "the serving certificate covers the Service's DNS names");

    // Both webhook kinds: inject-ca-from names the serving Certificate (its CA is what cert-manager injects).
    let inject = format!("provgate-system/{}", serving["metadata"]["name"].as_str().unwrap());
    let patches = kustomization["patches"].as_array().unwrap();
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        let patch = patches.iter().find(|p| p["target"]["kind"] == kind).unwrap_or_else(|| panic!("no {kind} patch"));
        assert_eq!(patch["target"]["name"], "provgate");
        let body: Value = serde_yaml_ng::from_str(patch["patch"].as_str().unwrap()).unwrap();
        assert_eq!(body["kind"], kind);
        assert_eq!(body["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], inject.as_str());
    }

    // provgate reads the Secret cert-manager writes, as files, with managed TLS off.
    let config = provgate::config::Config::from_file(&overlay().join("provgate.yaml")).unwrap();
    assert_eq!(config.tls.managed, None, "cert-manager owns the certificates");
    let cert = config.tls.cert_file.clone().unwrap();
    let deployment = &yaml_docs(&overlay().join("deployment-tls.yaml"))[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert!(cert.starts_with(mount["mountPath"].as_str().unwrap()), "{} is not mounted", cert.display());
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["secret"]["secretName"], serving["spec"]["secretName"]);

    // Apart from the TLS source, the overlay's config is the shipped one.
    let base = provgate::config::Config::from_file(&overlay().join("../../provgate.yaml")).unwrap();
    let mut same = config.clone();
    same.tls = base.tls.clone();
    assert_eq!(format!("{same:?}"), format!("{base:?}"), "keep overlays/cert-manager/provgate.yaml in step");
}
