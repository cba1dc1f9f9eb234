//! Signing at test time with tools provgate did not write (PyPI cryptography + securesystemslib through
//! `tests/signers/e2e_sign.py`), and attaching the results the way cosign stores them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use super::registry::{Desc, Layout, tool};

pub const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

pub fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeds").join(name)
}

/// What the independent signer produced for one digest.
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: String,
    pub envelope: Vec<u8>,
}

pub fn sign(keydir: &Path, key: &str, digest_hex: &str, statement: &Path) -> Signed {
    sign_as(keydir, key, digest_hex, statement, "application/vnd.in-toto+json")
}

pub fn sign_as(keydir: &Path, key: &str, digest_hex: &str, statement: &Path, payload_type: &str) -> Signed {
    run_signer(keydir, key, digest_hex, statement, payload_type, "index.docker.io/acme/app")
}

/// Signs with a payload naming `reference` (cosign names the repository the image was pushed to).
pub fn sign_named(keydir: &Path, key: &str, digest_hex: &str, statement: &Path, reference: &str) -> Signed {
    run_signer(keydir, key, digest_hex, statement, "application/vnd.in-toto+json", reference)
}

fn run_signer(
    keydir: &Path,
    key: &str,
    digest_hex: &str,
    statement: &Path,
    payload_type: &str,
    reference: &str,
) -> Signed {
    let python = tool(
        "PROVGATE_TEST_PYTHON",
        "python3",
        "run ./scripts/test, which creates a venv with PyPI cryptography and securesystemslib",
    );
    let named = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(reference)[..4]);
    let out = keydir.join(format!("{key}-{}-{}-{named}.json", &digest_hex[..12], payload_type.len()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signers/e2e_sign.py");
    let status = std::process::Command::new(python)
        .arg(script)
        .arg(keydir)
        .arg(key)
        .arg(digest_hex)
        .arg(statement)
        .arg(&out)
        .arg(payload_type)
        .arg(reference)
        .output()
        .unwrap();
    assert!(status.status.success(), "e2e_sign.py: {}", String::from_utf8_lossy(&status.stderr));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    Signed {
        payload: b64.decode(v["payload"].as_str().unwrap()).unwrap(),
        signature: v["signature"].as_str().unwrap().to_owned(),
        envelope: serde_json::to_vec(&v["envelope"]).unwrap(),
    }
}

/// Signs `image` with the `chains` key of `keydir` (the Tekton Chains kaniko statement) and stores the signature as
/// its cosign `.sig` tag in `layout`.
pub fn sign_image(layout: &mut Layout, keydir: &Path, image: &Desc) {
    sign_image_named(layout, keydir, image, "index.docker.io/acme/app");
}

/// [`sign_image`] with the payload naming `reference`, as cosign names the repository it signed in.
pub fn sign_image_named(layout: &mut Layout, keydir: &Path, image: &Desc, reference: &str) {
    let statement = seed("chains-kaniko-slsa-v0.2-statement.json");
    let s = sign_named(keydir, "chains", image.hex(), &statement, reference);
    attach(
        layout,
        image,
        "sig",
        (super::registry::SIMPLE_SIGNING, s.payload, serde_json::json!({SIG_ANNOTATION: s.signature})),
    );
}

/// Stores one layer as the cosign `sha256-<hex>.SUFFIX` tag of `image` in `layout`.
pub fn attach(layout: &mut Layout, image: &Desc, suffix: &str, layer: (&str, Vec<u8>, Value)) {
    let manifest = layout.cosign_manifest(&[layer]);
    layout.tag(&format!("sha256-{}.{suffix}", image.hex()), &manifest);
}
