//! A real Kubernetes API server on loopback: Debian's etcd-server and kube-apiserver (1.20, built from Debian's
//! `kubernetes` source package by scripts/deps/30-kube.sh). No controller-manager, scheduler or kubelet: objects
//! are stored and admitted, nothing runs. Both processes are killed on drop; every wait is bounded.

use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::registry::{Proc, Tls, free_port, tool};

pub fn kube_apiserver_bin() -> std::path::PathBuf {
    tool(
        "PROVGATE_TEST_KUBE_APISERVER",
        "kube-apiserver",
        "scripts/deps/30-kube.sh builds it from Debian's kubernetes source package",
    )
}

pub fn etcd_bin() -> std::path::PathBuf {
    tool("PROVGATE_TEST_ETCD", "etcd", "apt-get install etcd-server")
}

/// The admin's bearer token (group `system:masters`).
const ADMIN_TOKEN: &str = "provgate-test-admin-token";

/// etcd and kube-apiserver on loopback ports, with their own data and certificates.
pub struct Cluster {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The CA that issued the apiserver's serving certificate.
    pub tls: Tls,
    // Dropped in order: the apiserver before etcd, then the directory.
    apiserver: Proc,
    _etcd: Proc,
    dir: TempDir,
}

impl Cluster {
    /// Starts etcd and kube-apiserver and waits (at most 90 s) until `/healthz` answers `ok` for the admin.
    pub async fn start() -> Self {
        Self::start_with_admission_config(None).await
    }

    /// [`Cluster::start`] with `--admission-control-config-file` (an `AdmissionConfiguration`) when given.
    pub async fn start_with_admission_config(admission_config: Option<&std::path::Path>) -> Self {
        let apiserver_bin = kube_apiserver_bin();
        let dir = TempDir::new().unwrap();
        let d = dir.path();

        let (client, peer) = (format!("http://127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name=test")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn");
        let mut etcd = Proc::spawn(cmd, d.join("etcd.log"));
        etcd.wait_listening(client.trim_start_matches("http://"));

        let tls = Tls::new(d);
        // Service-account tokens: an ECDSA key made now, the private half signs, the public half verifies.
        let (sa_key, sa_pub) = (d.join("sa.key"), d.join("sa.pub"));
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&sa_key, key.serialize_pem()).unwrap();
        std::fs::write(&sa_pub, key.public_key_pem()).unwrap();
        let tokens = d.join("tokens.csv");
        std::fs::write(&tokens, format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n")).unwrap();
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(apiserver_bin);
        cmd.arg(format!("--etcd-servers={client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--tls-cert-file={}", tls.cert.display()))
            .arg(format!("--tls-private-key-file={}", tls.key.display()))
            .arg(format!("--client-ca-file={}", tls.ca_pem.display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--api-audiences=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .arg("--logtostderr=true")
            .arg("--v=0");
        if let Some(file) = admission_config {
            cmd.arg(format!("--admission-control-config-file={}", file.display()));
        }
        let apiserver = Proc::spawn(cmd, d.join("kube-apiserver.log"));
        let mut cluster = Self { url, tls, apiserver, _etcd: etcd, dir };
        cluster.wait_healthy().await;
        cluster
    }

    async fn wait_healthy(&mut self) {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.tls.ca_pem).unwrap()).unwrap();
        let http = reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(5)).build().unwrap();
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(90) {
            self.apiserver.assert_running("kube-apiserver");
            match http.get(format!("{}/healthz", self.url)).bearer_auth(ADMIN_TOKEN).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() && body == "ok" {
                        return;
                    }
                    last = format!("{status}: {body}");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("kube-apiserver not healthy in 90 s (last: {last}); log:\n{}", self.apiserver.log_text());
    }

    /// A kube-rs client for the admin (trusting only the apiserver's CA).
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.root_cert_file = Some(self.tls.ca_pem.clone());
        config.auth_info.token = Some(ADMIN_TOKEN.to_owned().into());
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(60));
        kube::Client::try_from(config).unwrap()
    }

    /// A kube-rs client authenticated by a bearer `token` (a ServiceAccount's, say), trusting only the apiserver's CA.
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.root_cert_file = Some(self.tls.ca_pem.clone());
        config.auth_info.token = Some(token.to_owned().into());
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(60));
        kube::Client::try_from(config).unwrap()
    }

    /// The apiserver's log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.apiserver.log_text()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Creates `crd` and waits (at most 30 s) until the apiserver reports it `Established` (its API is served).
pub async fn install_crd(
    client: &kube::Client,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    api.create(&kube::api::PostParams::default(), crd).await.unwrap();
    let name = crd.metadata.name.clone().unwrap();
    let start = Instant::now();
    loop {
        let got = api.get(&name).await.unwrap();
        let established = got
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "CRD {name} not established in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
