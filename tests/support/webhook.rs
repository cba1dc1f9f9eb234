//! Starts the real webhook (HTTPS on a loopback port, certificates from a fresh CA) and posts reviews to it.

use std::path::{Path, PathBuf};

use provgate::app::Running;
use provgate::config::Config;
use serde_json::Value;

pub struct Webhook {
    pub running: Running,
    pub client: reqwest::Client,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The PEM of the CA that issued the serving certificate (a webhook configuration's `caBundle`).
    pub ca_pem: String,
}

/// The reason codes a review response carries (`auditAnnotations.reasons`), or "".
pub fn reasons(response: &Value) -> &str {
    response["auditAnnotations"]["reasons"].as_str().unwrap_or_default()
}

/// The denial message of a review response (`status.message`), or "".
pub fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// An AdmissionReview fixture from `tests/fixtures/admission/NAME.json`.
pub fn review(name: &str) -> Value {
    let path = fixtures_dir().join("admission").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A policy document.
pub fn policy(name: &str, mode: &str, images: &[&str]) -> String {
    let globs: Vec<String> = images.iter().map(|g| format!("{g:?}")).collect();
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  match:\n    images: [{}]\n",
        globs.join(", ")
    )
}

/// A client that trusts only the CA in `ca_pem`.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    client_builder(ca_pem).build().unwrap()
}

/// A client that trusts only the CA in `ca_pem` and presents `identity` (a certificate and its key, PEM).
pub fn https_client_with_identity(ca_pem: &[u8], identity: &str) -> reqwest::Client {
    client_builder(ca_pem).identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap()).build().unwrap()
}

fn client_builder(ca_pem: &[u8]) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(ca_pem).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).https_only(true).timeout(std::time::Duration::from_secs(30))
}

/// A CA for client certificates (`tls.clientCaFile`), issuing certificates for clients such as the API server.
pub struct ClientCa {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        Self { ca_pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A client certificate for `name` and its key: `(certificate PEM, key PEM)`.
    pub fn issue(&self, name: &str) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// [`ClientCa::issue`] as one PEM holding the certificate and the key (a [`reqwest::Identity`]).
    pub fn identity(&self, name: &str) -> String {
        let (cert, key) = self.issue(name);
        format!("{cert}{key}")
    }
}

impl Webhook {
    /// Serves `policies` (file name, YAML) with the config `tweak` leaves, on ephemeral loopback ports.
    pub async fn start(policies: &[(&str, String)], tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(policies, None, tweak).await
    }

    /// [`Webhook::start`] reaching each of `hosts` (`host:port` and its registry settings: TLS trust, plain HTTP).
    pub async fn trusting(
        policies: &[(&str, String)],
        hosts: Vec<(String, provgate::registry::HostConfig)>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start(policies, move |c| {
            c.registries.hosts.extend(hosts);
            tweak(c);
        })
        .await
    }

    /// [`Webhook::start`] with a Kubernetes API client.
    pub async fn start_with(
        policies: &[(&str, String)],
        kube: Option<kube::Client>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        for (file, text) in policies {
            std::fs::write(policy_dir.join(file), text).unwrap();
        }
        let generated = provgate::certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()]).unwrap();
        provgate::certs::write(&dir.path().join("certs"), &generated).unwrap();
        let (_, cert, key) = provgate::certs::paths(&dir.path().join("certs"));
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            policies: policy_dir,
            ..Config::default()
        };
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
        config.audit.log = Some(dir.path().join("audit.jsonl"));
        tweak(&mut config);
        let running = provgate::app::start_with(config, kube).await.unwrap();
        let url = format!("https://localhost:{}/validate", running.https.port());
        Self { running, client: https_client(generated.ca_pem.as_bytes()), url, dir, ca_pem: generated.ca_pem }
    }

    /// Posts raw bytes; returns the HTTP status and body.
    pub async fn post_raw(&self, body: Vec<u8>) -> (u16, String) {
        self.post_raw_with(&self.client, body).await.unwrap()
    }

    /// Posts raw bytes with `client`; the HTTP status and body, or the client's error.
    pub async fn post_raw_with(&self, client: &reqwest::Client, body: Vec<u8>) -> reqwest::Result<(u16, String)> {
        let resp = client.post(&self.url).header("content-type", "application/json").body(body).send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    /// Posts a review that must be answered with 200; returns its `response`, checking the envelope and uid.
    pub async fn review(&self, review: &Value) -> Value {
        self.review_with(&self.client, review).await
    }

    /// [`Webhook::review`] with `client`.
    pub async fn review_with(&self, client: &reqwest::Client, review: &Value) -> Value {
        let sent = serde_json::to_vec(review).unwrap();
        let resp = client.post(&self.url).header("content-type", "application/json").body(sent).send().await.unwrap();
        let (status, kind) = (resp.status().as_u16(), resp.headers().get("content-type").cloned());
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(kind.as_ref().map(|k| k.to_str().unwrap()), Some("application/json"), "the answer is JSON");
        let out: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], review["request"]["uid"], "the response answers the request's uid");
        out["response"].clone()
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.running.admin)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The audit records of every review answered so far (waiting until the writer has flushed them).
    pub fn audit_records(&self) -> Vec<Value> {
        assert!(self.running.audit.settle(std::time::Duration::from_secs(10)), "the audit log did not settle");
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}
