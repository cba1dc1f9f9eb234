//! OCI image layouts written in Rust with fixed content (reproducible digests), and cosign-style artifact payloads.

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tempfile::TempDir;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const BUNDLE_OLD: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
    pub bytes: Vec<u8>,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
    pub fn hex(&self) -> &str {
        &self.digest[7..]
    }
}

/// An OCI image layout on disk, written as blobs are added.
pub struct Layout {
    pub dir: TempDir,
    refs: Vec<Value>,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

impl Layout {
    /// The tags of the layout (`org.opencontainers.image.ref.name` of each entry of its `index.json`).
    pub fn tags(&self) -> Vec<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("index.json")).unwrap()).unwrap();
        let names = index["manifests"].as_array().unwrap().iter();
        names.map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_owned()).collect()
    }

    pub fn new() -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Self { dir, refs: Vec::new() };
        l.write_index();
        l
    }

    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(self.dir.path().join("blobs/sha256").join(&hex), bytes).unwrap();
        Desc {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{hex}"),
            size: bytes.len(),
            bytes: bytes.to_vec(),
        }
    }

    pub fn json(&self, media_type: &str, value: &Value) -> Desc {
        self.blob(media_type, &serde_json::to_vec(value).unwrap())
    }

    /// Names `desc` as `tag` in `index.json`.
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        let mut entry = desc.json();
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(entry);
        self.write_index();
    }

    /// `top` (a manifest, or an index/list and its manifests) with the blobs they name, in skopeo's `dir:` layout.
    pub fn export_dir(&self, top: &Desc) -> TempDir {
        let out = TempDir::new().unwrap();
        let blobs = self.dir.path().join("blobs/sha256");
        std::fs::write(out.path().join("version"), "Directory Transport Version: 1.1\n").unwrap();
        std::fs::write(out.path().join("manifest.json"), &top.bytes).unwrap();
        let top_json: Value = serde_json::from_slice(&top.bytes).unwrap();
        let mut manifests = vec![top_json.clone()];
        for child in top_json["manifests"].as_array().into_iter().flatten() {
            let hex = &child["digest"].as_str().unwrap()[7..];
            let bytes = std::fs::read(blobs.join(hex)).unwrap();
            std::fs::write(out.path().join(format!("{hex}.manifest.json")), &bytes).unwrap();
            manifests.push(serde_json::from_slice(&bytes).unwrap());
        }
        for m in &manifests {
            for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
                if let Some(digest) = d["digest"].as_str() {
                    std::fs::copy(blobs.join(&digest[7..]), out.path().join(&digest[7..])).unwrap();
                }
            }
        }
        out
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs});
        std::fs::write(self.dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// A single-platform OCI image whose content is fixed by `marker`.
    pub fn image(&self, marker: &str, arch: &str) -> Desc {
        let layer = self.blob(OCI_LAYER, format!("provgate test layer {marker}").as_bytes());
        let config = self.json(
            OCI_CONFIG,
            &json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
        );
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.json(), "layers": [layer.json()]}),
        )
    }

    /// A two-platform OCI index (linux/amd64 and linux/arm64/v8).
    pub fn index(&self, marker: &str) -> (Desc, Desc, Desc) {
        let amd = self.image(&format!("{marker}-amd64"), "amd64");
        let arm = self.image(&format!("{marker}-arm64"), "arm64");
        let mut a = amd.json();
        a["platform"] = json!({"os": "linux", "architecture": "amd64"});
        let mut b = arm.json();
        b["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        let index = self.json(OCI_INDEX, &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [a, b]}));
        (index, amd, arm)
    }

    /// A two-platform Docker manifest list (linux/amd64, linux/arm/v7) of Docker schema 2 manifests.
    pub fn docker_list(&self, marker: &str) -> (Desc, Desc, Desc) {
        let manifest = |arch: &str| {
            let layer = self.blob(DOCKER_LAYER, format!("provgate docker layer {marker}-{arch}").as_bytes());
            let config = self.json(
                DOCKER_CONFIG,
                &json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
            );
            self.json(
                DOCKER_MANIFEST,
                &json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.json(), "layers": [layer.json()]}),
            )
        };
        let amd = manifest("amd64");
        let arm = manifest("arm");
        let mut a = amd.json();
        a["platform"] = json!({"os": "linux", "architecture": "amd64"});
        let mut b = arm.json();
        b["platform"] = json!({"os": "linux", "architecture": "arm", "variant": "v7"});
        let list = self.json(DOCKER_LIST, &json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [a, b]}));
        (list, amd, arm)
    }

    /// A cosign-style artifact manifest (the `.sig`/`.att` shape): one layer per `(media type, bytes, annotations)`.
    pub fn cosign_manifest(&self, layers: &[(&str, Vec<u8>, Value)]) -> Desc {
        let descs: Vec<Desc> = layers.iter().map(|(mt, bytes, _)| self.blob(mt, bytes)).collect();
        let config = self.json(
            OCI_CONFIG,
            &json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>()}}),
        );
        let layer_json: Vec<Value> = descs
            .iter()
            .zip(layers)
            .map(|(d, (_, _, ann))| {
                let mut j = d.json();
                j["annotations"] = ann.clone();
                j
            })
            .collect();
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.json(), "layers": layer_json}),
        )
    }

    /// An OCI 1.1 referrer of `subject` with one layer.
    pub fn referrer(&self, subject: &Desc, artifact_type: &str, layer_type: &str, layer: &[u8], note: &str) -> Desc {
        let layer = self.blob(layer_type, layer);
        let config = self.blob(OCI_EMPTY, b"{}");
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": config.json(), "layers": [layer.json()], "subject": subject.json(),
                "annotations": {"org.example.note": note}}),
        )
    }

    /// The referrers tag-schema index listing `referrers`. Entries carry no `artifactType`: skopeo 1.9 (Debian 12)
    /// cannot push such an index byte for byte, so the client must read the type from the manifest itself.
    pub fn referrers_index(&self, referrers: &[&Desc]) -> Desc {
        let manifests: Vec<Value> = referrers.iter().map(|d| d.json()).collect();
        self.json(OCI_INDEX, &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
    }
}

/// A simple-signing payload for `digest`, as cosign writes it.
pub fn simple_signing_payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"critical": {"identity": {"docker-reference": reference},
        "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}, "optional": null}))
    .unwrap()
}

/// A DSSE envelope around an in-toto statement for `hex` (the signature is not checked by the registry module).
pub fn dsse_envelope(hex: &str) -> Vec<u8> {
    let statement = json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha256": hex}}],
        "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}});
    let payload = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&statement).unwrap());
    serde_json::to_vec(&json!({"payloadType": "application/vnd.in-toto+json", "payload": payload,
        "signatures": [{"keyid": "", "sig": "MEUCIQ=="}]}))
    .unwrap()
}

/// A Sigstore bundle v0.3 document (content opaque to the registry module).
pub fn bundle(hex: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"mediaType": BUNDLE, "verificationMaterial": {"publicKey": {"hint": "test"}},
        "dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": hex, "signatures": []}}))
    .unwrap()
}
