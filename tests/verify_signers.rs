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
                     (scripts/deps/20-signers.sh), or in bash: export PROVGATE_CACHE=~/.cache/provgate; \
                     source scripts/deps/00-common.sh; source scripts/deps/20-signers.sh"
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
        data: data.into(),
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

fn bundle_layer(data: Vec<u8>) -> Artifacts {
    let manifest = Digest::sha256_of(b"referrer manifest");
    let origin = Origin::Referrer { manifest, artifact_type: Some(media_type::BUNDLE_V03.into()) };
    Artifacts { bundles: vec![layer(origin, media_type::BUNDLE_V03, data, &[])], ..Default::default() }
}

fn flip_bundle_statement(bundle: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    let env = flip_statement(v["dsseEnvelope"].to_string().as_bytes());
    v["dsseEnvelope"] = serde_json::from_slice(&env).unwrap();
    v.to_string().into_bytes()
}

fn keyless_authority(root: &[u8], subject: &str) -> Authority {
    use provgate::verify::{Identity, IdentityMatcher, Keyless, Trust, TrustedRoot};
    let root = std::sync::Arc::new(TrustedRoot::from_json(root).unwrap());
    let id = Identity {
        subject: IdentityMatcher::regex(subject).unwrap(),
        issuer: IdentityMatcher::Exact("https://token.actions.githubusercontent.com".into()),
    };
    Authority::new("github", Trust::Keyless(Keyless::new(root, vec![id]).unwrap()))
}

fn node_modules() -> PathBuf {
    tool("PROVGATE_TEST_NODE_MODULES", "npm @sigstore/sign @sigstore/mock (node_modules directory)")
}

/// Key-signed and keyless bundles for [`IMAGE_HEX`], made now by npm @sigstore/sign and @sigstore/mock.
fn bundles() -> tempfile::TempDir {
    let modules = node_modules();
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("node")
        .arg(signers_dir().join("bundles.js"))
        .arg(dir.path())
        .arg(IMAGE_HEX)
        .env("NODE_PATH", &modules));
    dir
}

#[test]
fn sigstore_js_bundles_verify_key_signed_and_keyless_and_twins_fail() {
    let dir = bundles();
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let img = [image()];

    // Key-signed bundles: publicKey hint only, no tlog entry (Chains' sigstore-bundle mode, cosign v3 --key).
    let auth = authority("chains", &read("key.pub.pem"));
    let check =
        verify::signatures(&bundle_layer(read("key-signature.bundle.json")), &image(), std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    assert_eq!(check.verified[0].docker_reference, "index.docker.io/acme/app");
    let check =
        verify::attestations(&bundle_layer(read("key-signature.bundle.json")), &img, std::slice::from_ref(&auth));
    assert_eq!(check.found(), 0, "a cosign/sign/v1 bundle is a signature, not an attestation");
    let check =
        verify::attestations(&bundle_layer(read("key-attestation.bundle.json")), &img, std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    assert_eq!(check.verified[0].predicate_type, "https://slsa.dev/provenance/v1");
    let twin = flip_bundle_statement(&read("key-attestation.bundle.json"));
    let check = verify::attestations(&bundle_layer(twin), &img, std::slice::from_ref(&auth));
    assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
    let other = Digest::sha256_of(b"other");
    let check =
        verify::signatures(&bundle_layer(read("key-signature.bundle.json")), &other, std::slice::from_ref(&auth));
    assert_eq!(check.outcome().unwrap_err().code(), "subject-mismatch");

    // Keyless bundles: mock Fulcio certificate + mock Rekor intoto entry with an inclusion promise.
    let root = read("keyless.trusted_root.json");
    let auth = keyless_authority(&root, r"https://github\.com/acme/app/.*");
    let check =
        verify::signatures(&bundle_layer(read("keyless-signature.bundle.json")), &image(), std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    let check =
        verify::attestations(&bundle_layer(read("keyless-attestation.bundle.json")), &img, std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    assert!(
        matches!(&check.verified[0].signer, Signer::Certificate { issuer, .. } if issuer == "https://token.actions.githubusercontent.com")
    );

    let code = |bundle: Vec<u8>, auth: &Authority| {
        verify::attestations(&bundle_layer(bundle), &img, std::slice::from_ref(auth)).outcome().unwrap_err().code()
    };
    let att = read("keyless-attestation.bundle.json");
    assert_eq!(code(flip_bundle_statement(&att), &auth), "wrong-key");
    assert_eq!(code(att.clone(), &keyless_authority(&root, r"https://github\.com/evil/.*")), "identity-mismatch");
    assert_eq!(code(att.clone(), &keyless_authority(&read("other.trusted_root.json"), ".*")), "untrusted-certificate");
    // The mock Fulcio embeds an SCT from the mock CT log that bundles.js lists in the trusted root. Each root entry
    // counts only while listed and inside its validFor; a root that lists no CT log asks for no SCT.
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut r: serde_json::Value = serde_json::from_slice(&root).unwrap();
        edit(&mut r);
        r.to_string().into_bytes()
    };
    let other: serde_json::Value = serde_json::from_slice(&read("other.trusted_root.json")).unwrap();
    let swapped = edited(&|r| r["ctlogs"] = other["ctlogs"].clone());
    assert_eq!(code(att.clone(), &keyless_authority(&swapped, ".*")), "sct-unknown-log");
    let future = "2999-01-01T00:00:00Z";
    for pointer in [
        "/ctlogs/0/publicKey/validFor/start",
        "/tlogs/0/publicKey/validFor/start",
        "/certificateAuthorities/0/validFor/start",
    ] {
        let late = edited(&|r| *r.pointer_mut(pointer).unwrap() = future.into());
        assert_eq!(code(att.clone(), &keyless_authority(&late, ".*")), "trusted-root-validity", "{pointer}");
    }
    let no_ctlogs = edited(&|r| r["ctlogs"] = serde_json::json!([]));
    let check = verify::attestations(&bundle_layer(att.clone()), &img, &[keyless_authority(&no_ctlogs, ".*")]);
    assert_eq!(check.outcome(), Ok(()));
    let mut v: serde_json::Value = serde_json::from_slice(&att).unwrap();
    v["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1".into();
    assert_eq!(code(v.to_string().into_bytes(), &auth), "set-invalid");
    let mut v: serde_json::Value = serde_json::from_slice(&att).unwrap();
    v["verificationMaterial"]["tlogEntries"] = serde_json::json!([]);
    assert_eq!(code(v.to_string().into_bytes(), &auth), "missing-transparency");
    // A key-signed bundle offered to a keyless authority has no certificate.
    assert_eq!(code(read("key-attestation.bundle.json"), &auth), "missing-transparency");

    // Second opinion: npm @sigstore/verify agrees on the originals and on the tampered twins.
    let mut set_twin: serde_json::Value = serde_json::from_slice(&att).unwrap();
    set_twin["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1".into();
    std::fs::write(dir.path().join("twin-key.json"), flip_bundle_statement(&read("key-attestation.bundle.json")))
        .unwrap();
    std::fs::write(dir.path().join("twin-keyless.json"), flip_bundle_statement(&att)).unwrap();
    std::fs::write(dir.path().join("twin-set.json"), set_twin.to_string()).unwrap();
    let files = [
        "key-signature.bundle.json",
        "key-attestation.bundle.json",
        "keyless-signature.bundle.json",
        "keyless-attestation.bundle.json",
        "twin-key.json",
        "twin-keyless.json",
        "twin-set.json",
    ];
    let out = Command::new("node")
        .arg(signers_dir().join("verify_bundles.js"))
        .arg(dir.path().join("keyless.trusted_root.json"))
        .arg(dir.path().join("key.pub.pem"))
        .args(files.iter().map(|f| dir.path().join(f)))
        .env("NODE_PATH", node_modules())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.len(), files.len());
    for (file, verdict) in files.iter().zip(&verdicts) {
        assert_eq!(verdict["ok"], !file.starts_with("twin"), "@sigstore/verify on {file}: {verdict}");
    }
    // It also refuses the SCT under a root that lists another CT log.
    std::fs::write(dir.path().join("swapped.trusted_root.json"), &swapped).unwrap();
    let out = Command::new("node")
        .arg(signers_dir().join("verify_bundles.js"))
        .arg(dir.path().join("swapped.trusted_root.json"))
        .arg(dir.path().join("key.pub.pem"))
        .arg(dir.path().join("keyless-attestation.bundle.json"))
        .env("NODE_PATH", node_modules())
        .output()
        .unwrap();
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["ok"], false, "@sigstore/verify under another CT log: {verdict}");
}

/// cosign's legacy keyless `.att` layout: the DSSE envelope as the layer, the Fulcio certificate and the Rekor
/// bundle (SET + entry) as annotations. Built here from the sigstore-js keyless bundle's parts.
fn legacy_att_from_bundle(bundle: &[u8]) -> Artifacts {
    let b64 = base64::engine::general_purpose::STANDARD;
    let v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    let cert = b64.decode(v["verificationMaterial"]["certificate"]["rawBytes"].as_str().unwrap()).unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64.encode(cert).as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
    );
    let e = &v["verificationMaterial"]["tlogEntries"][0];
    let rekor = serde_json::json!({
        "SignedEntryTimestamp": e["inclusionPromise"]["signedEntryTimestamp"],
        "Payload": {
            "body": e["canonicalizedBody"],
            "integratedTime": e["integratedTime"].as_str().unwrap().parse::<i64>().unwrap(),
            "logIndex": e["logIndex"].as_str().unwrap().parse::<i64>().unwrap(),
            "logID": hex::encode(b64.decode(e["logId"]["keyId"].as_str().unwrap()).unwrap()),
        }
    });
    let annotations = [
        ("dev.cosignproject.cosign/signature", String::new()),
        ("dev.sigstore.cosign/certificate", pem),
        ("dev.sigstore.cosign/bundle", rekor.to_string()),
    ];
    let l = layer(Origin::AttTag, media_type::DSSE_ENVELOPE, v["dsseEnvelope"].to_string().into_bytes(), &annotations);
    Artifacts { attestations: vec![l], ..Default::default() }
}

#[test]
fn legacy_keyless_att_layer_verifies_and_its_twin_fails() {
    let dir = bundles();
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let auth = keyless_authority(&read("keyless.trusted_root.json"), r"https://github\.com/acme/app/.*");
    let bundle = read("keyless-attestation.bundle.json");
    let check = verify::attestations(&legacy_att_from_bundle(&bundle), &[image()], std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    let twin = legacy_att_from_bundle(&flip_bundle_statement(&bundle));
    let check = verify::attestations(&twin, &[image()], std::slice::from_ref(&auth));
    assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
}
