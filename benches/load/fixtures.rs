//! Bench fixtures: images and cosign `.sig` signatures made in process (a P-256 key made at start) and pushed
//! straight to the registry's HTTP API, so that hundreds of distinct cold images cost seconds, not minutes.

use std::collections::HashSet;
use std::sync::Mutex;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::json;
use sha2::Digest as _;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The repository every bench image lives in.
pub const REPO: &str = "bench/app";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A cosign-style P-256 signing key.
pub struct Signer(EcdsaKeyPair);

impl Signer {
    pub fn new() -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap())
    }

    /// The public key as PEM (what `cosign.pub` holds).
    pub fn public_pem(&self) -> String {
        let der = self.0.public_key().as_der().unwrap();
        let body = b64(der.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(&aws_lc_rs::rand::SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }

    /// Signing as `cosign sign` does for images reached through `host`: the payload names `host/{REPO}`.
    pub fn at<'a>(&'a self, host: &'a str) -> Signing<'a> {
        Signing { signer: self, host, annotated: false }
    }
}

/// How a bench image is signed: by whom, the registry host its payload names (the one provgate reviews it through,
/// as a signature names the image as pushed), and whether with an annotation (`cosign sign -a`), which makes the
/// payload one provgate has to read from the registry.
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    pub signer: &'a Signer,
    pub host: &'a str,
    pub annotated: bool,
}

impl Signing<'_> {
    pub fn annotated(self) -> Self {
        Self { annotated: true, ..self }
    }
}

/// Pushes blobs and manifests to a docker-registry through its HTTP API.
pub struct Pusher {
    client: reqwest::Client,
    base: String,
    pushed: Mutex<HashSet<String>>,
}

impl Pusher {
    pub fn new(addr: &str) -> Self {
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        Self { client, base: format!("http://{addr}"), pushed: Mutex::default() }
    }

    /// Uploads `bytes` (once per digest); returns the descriptor JSON.
    async fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let digest = sha256(bytes);
        let desc = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        if self.pushed.lock().unwrap().contains(&digest) {
            return desc;
        }
        let started = self.client.post(format!("{}/v2/{REPO}/blobs/uploads/", self.base)).send().await.unwrap();
        assert_eq!(started.status().as_u16(), 202, "starting an upload: {:?}", started.text().await);
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{}{location}", self.base) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .client
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "finishing an upload: {:?}", put.text().await);
        self.pushed.lock().unwrap().insert(digest);
        desc
    }

    async fn manifest(&self, reference: &str, bytes: &[u8]) {
        let url = format!("{}/v2/{REPO}/manifests/{reference}", self.base);
        let put = self.client.put(url).header("content-type", OCI_MANIFEST).body(bytes.to_vec()).send().await.unwrap();
        assert_eq!(put.status().as_u16(), 201, "pushing manifest {reference}: {:?}", put.text().await);
    }

    /// An image whose manifest is unique to `marker`, tagged `tag`; returns its digest.
    pub async fn image(&self, marker: &str, tag: &str) -> String {
        let layer = self.blob(OCI_LAYER, b"provgate bench layer").await;
        let config = json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}});
        let config = self.blob(OCI_CONFIG, &serde_json::to_vec(&config).unwrap()).await;
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
            "layers": [layer], "annotations": {"dev.provgate.bench": marker}}))
        .unwrap();
        self.manifest(tag, &manifest).await;
        sha256(&manifest)
    }

    /// A cosign `.sig` for `digest` signed as `signing` says, as cosign stores it (`sha256-<hex>.sig`).
    pub async fn sign(&self, signing: Signing<'_>, digest: &str) {
        let optional = if signing.annotated { json!({"bench": "annotated"}) } else { json!(null) };
        let payload = serde_json::to_vec(&json!({"critical": {"identity": {"docker-reference": format!("{}/{REPO}",
            signing.host)}, "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"},
            "optional": optional}))
        .unwrap();
        let signature = b64(&signing.signer.sign(&payload));
        let mut layer = self.blob(SIMPLE_SIGNING, &payload).await;
        layer["annotations"] = json!({SIG_ANNOTATION: signature});
        let config = json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}});
        let config = self.blob(OCI_CONFIG, &serde_json::to_vec(&config).unwrap()).await;
        let manifest = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}),
        )
        .unwrap();
        self.manifest(&format!("sha256-{}.sig", &digest[7..]), &manifest).await;
    }

    /// `n` images named `{prefix}-{i}` (each also its tag), signed as `signing` says unless it is `None`; their
    /// digests.
    pub async fn images(&self, prefix: &str, n: usize, signing: Option<Signing<'_>>) -> Vec<String> {
        let jobs = (0..n).map(|i| async move {
            let name = format!("{prefix}-{i}");
            let digest = self.image(&name, &name).await;
            if let Some(signing) = signing {
                self.sign(signing, &digest).await;
            }
            digest
        });
        let mut out = Vec::with_capacity(n);
        // The first alone: it uploads the blobs every image shares, which concurrent uploads would race on.
        let mut jobs = jobs;
        if let Some(first) = jobs.next() {
            out.push(first.await);
        }
        let mut stream = futures::stream::iter(jobs).buffered(8);
        while let Some(d) = stream.next().await {
            out.push(d);
        }
        out
    }
}
