//! provgate verifies what independent signers produce (PyPI cryptography + securesystemslib, npm @sigstore/sign),
//! with keys generated at test time, and rejects each output's tampered twin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use provgate::artifact::{Artifacts, Layer, Origin, media_type};
use provgate::images::Digest;
use provgate::verify::{self, Authority, KeySet, PublicKey, Signer};

const IMAGE_HEX: &str = "5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e";
const KINDS: &[(&str, &str)] = &[
    ("p256", "ecdsa-p256-sha256"),
    ("p384-sha384", "ecdsa-p384-sha384"),
    ("p384-sha256", "ecdsa-p384-sha256"),
    ("rsa-pkcs1", "rsa-pkcs1v15-sha256"),
    ("rsa-pss", "rsa-pss-sha256"),
    ("rsa-pss-max", "rsa-pss-sha256"),
    ("ed25519", "ed25519"),
];

fn tool(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => PathBuf::from(p),
        _ => panic!(
            "{var} is not set or missing: {what}. Run the tests through scripts/test, which installs it \
                     (scripts/deps/20-signers.sh), or: source scripts/deps/00-common.sh scripts/deps/20-signers.sh"
        ),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signers")
}

fn image() -> Digest {
    Digest::parse(&format!("sha256:{IMAGE_HEX}")).unwrap()
}

fn layer(origin: Origin, media: &str, data: Vec<u8>, annotations: &[(&str, String)]) -> Layer {
    Layer {
        origin,
        media_type: media.into(),
        digest: Digest::sha256_of(&data),
        data,
        annotations: annotations.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<BTreeMap<_, _>>(),
    }
}

fn authority(name: &str, pem: &[u8]) -> Authority {
    Authority::keys(name, KeySet::new(vec![PublicKey::from_pem(pem).unwrap()]).unwrap())
}

fn flip_statement(envelope: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Value = serde_json::from_slice(envelope).unwrap();
    let mut stmt = b64.decode(v["payload"].as_str().unwrap()).unwrap();
    let at = stmt.len() - 4;
    stmt[at] ^= 1;
    v["payload"] = b64.encode(stmt).into();
    v.to_string().into_bytes()
}

#[test]
fn python_cryptography_and_securesystemslib_signatures_verify_and_twins_fail() {
    let python = tool("PROVGATE_TEST_PYTHON", "a Python with PyPI cryptography and securesystemslib");
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(python).arg(signers_dir().join("sign_keys.py")).arg(dir.path()).arg(IMAGE_HEX));
    let read = |name: String| std::fs::read(dir.path().join(name)).unwrap();
    for (kind, scheme) in KINDS {
        let auth = authority(kind, &read(format!("{kind}.pub.pem")));
        let payload = read(format!("{kind}.payload.json"));
        let sig = String::from_utf8(read(format!("{kind}.sig.b64"))).unwrap();
        let sig_layer = |payload: Vec<u8>| {
            layer(
                Origin::SigTag,
                media_type::SIMPLE_SIGNING,
                payload,
                &[("dev.cosignproject.cosign/signature", sig.clone())],
            )
        };
        let a = Artifacts { signatures: vec![sig_layer(payload.clone())], ..Default::default() };
        let check = verify::signatures(&a, &image(), std::slice::from_ref(&auth));
        assert_eq!(check.outcome(), Ok(()), "{kind} .sig: {}", check.explain(std::slice::from_ref(&auth)));
        assert!(matches!(&check.verified[0].signer, Signer::Key { scheme: s, .. } if s == scheme), "{kind}");
        assert_eq!(check.verified[0].annotations["signer"], "python-cryptography");
        let mut twin = payload.clone();
        twin[payload.len() / 2] ^= 1;
        let a = Artifacts { signatures: vec![sig_layer(twin)], ..Default::default() };
        let check = verify::signatures(&a, &image(), std::slice::from_ref(&auth));
        assert_eq!(check.outcome().unwrap_err().code(), "wrong-key", "{kind} .sig twin");

        let envelope = read(format!("{kind}.att.json"));
        let att = |data: Vec<u8>| {
            let l = layer(
                Origin::AttTag,
                media_type::DSSE_ENVELOPE,
                data,
                &[("dev.cosignproject.cosign/signature", String::new())],
            );
            Artifacts { attestations: vec![l], ..Default::default() }
        };
        let check = verify::attestations(&att(envelope.clone()), &[image()], std::slice::from_ref(&auth));
        assert_eq!(check.outcome(), Ok(()), "{kind} .att: {}", check.explain(std::slice::from_ref(&auth)));
        assert_eq!(check.verified[0].predicate_type, "https://slsa.dev/provenance/v1");
        assert_eq!(check.verified[0].authority(), *kind);
        let check = verify::attestations(&att(flip_statement(&envelope)), &[image()], std::slice::from_ref(&auth));
        assert_eq!(check.outcome().unwrap_err().code(), "wrong-key", "{kind} .att twin");
        // The same envelope for another image: the subject does not match.
        let other = Digest::sha256_of(b"another image");
        let check = verify::attestations(&att(envelope), &[other], std::slice::from_ref(&auth));
        assert_eq!(check.outcome().unwrap_err().code(), "subject-mismatch", "{kind} .att other image");
    }
}
