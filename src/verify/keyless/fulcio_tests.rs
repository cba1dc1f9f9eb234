//! Fulcio-shaped certificate chains made at test time with rcgen (root, intermediate, code-signing leaf with an
//! embedded SCT from a test CT log), wrapped in Sigstore bundles with a test Rekor SET and judged through
//! `verify::attestations`: each certificate, trusted-root and SCT rule has a passing case and a failing twin.

use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_cert::der::{Decode, Encode, asn1::OctetString};

use crate::artifact::{Artifacts, Layer, Origin};
use crate::images::Digest;
use crate::verify::tests::statement_json;
use crate::verify::{Authority, Identity, IdentityMatcher, Keyless, Rejection, Trust, TrustedRoot, attestations, pae};

/// 2024-01-01T00:00:00Z: the leaf's notBefore; it is valid for ten minutes, as Fulcio's are.
const ISSUED: i64 = 1_704_067_200;
/// 2020-01-01T00:00:00Z: when the test CAs and logs start being trusted.
const EPOCH: i64 = 1_577_836_800;
const SUBJECT: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main";
const OIDC: &str = "https://token.actions.githubusercontent.com";
const IMAGE: &str = "4444444444444444444444444444444444444444444444444444444444444444";

fn b64e(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256(data: &[u8]) -> Vec<u8> {
    hex::decode(crate::images::Digest::sha256_of(data).hex()).unwrap()
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).unwrap().to_rfc3339()
}

/// A certificate and the key that signs under it.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

fn ca_params(name: &str, is_ca: IsCa, usages: &[KeyUsagePurpose]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "provgate.test");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = is_ca;
    p.key_usages = usages.to_vec();
    p.not_before = at(EPOCH);
    p.not_after = at(EPOCH + 20 * 365 * 86_400);
    p
}

const CA_USAGES: &[KeyUsagePurpose] = &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

impl Ca {
    fn root(params: CertificateParams) -> Self {
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Self { params, key, der }
    }

    fn under(params: CertificateParams, issuer: &Ca) -> Self {
        let key = KeyPair::generate().unwrap();
        let der = params.signed_by(&key, &issuer.issuer()).unwrap().der().clone();
        Self { params, key, der }
    }

    fn issuer(&self) -> rcgen::Issuer<'_, &KeyPair> {
        rcgen::Issuer::from_params(&self.params, &self.key)
    }

    /// The DER SubjectPublicKeyInfo, as it appears in the certificate.
    fn spki(&self) -> Vec<u8> {
        let cert = x509_cert::Certificate::from_der(&self.der).unwrap();
        cert.tbs_certificate().subject_public_key_info().to_der().unwrap()
    }
}

/// A Fulcio-shaped leaf: empty subject, URI SAN, OIDC issuer extension (v2), keyUsage digitalSignature, extended key
/// usage codeSigning, no basicConstraints, valid for ten minutes from [`ISSUED`].
fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(SUBJECT.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.not_before = at(ISSUED);
    p.not_after = at(ISSUED + 600);
    p.serial_number = Some(SerialNumber::from_slice(&[0x11, 0x18, 0x20, 0x04]));
    let issuer = x509_cert::der::asn1::Utf8StringRef::new(OIDC).unwrap().to_der().unwrap();
    p.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], issuer)];
    p
}

/// A CT log that signs RFC 6962 v1 SCTs for precertificates with a P-256 key.
struct CtLog {
    key: KeyPair,
}

impl CtLog {
    fn new() -> Self {
        Self { key: KeyPair::generate().unwrap() }
    }

    fn spki(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// A serialized SCT over (issuer key hash, precertificate TBS) at `millis`, encoded by hand from RFC 6962 §3.2
    /// so the verifier's parser and message builder are checked against an independent encoder.
    fn sct(&self, issuer_spki: &[u8], precert_tbs: &[u8], millis: u64) -> Vec<u8> {
        let mut signed = vec![0u8, 0u8]; // v1, certificate_timestamp
        signed.extend_from_slice(&millis.to_be_bytes());
        signed.extend_from_slice(&[0, 1]); // precert_entry
        signed.extend_from_slice(&sha256(issuer_spki));
        signed.extend_from_slice(&(precert_tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend_from_slice(precert_tbs);
        signed.extend_from_slice(&[0, 0]); // no extensions
        let sig = self.key.sign(&signed).unwrap();
        let mut sct = vec![0u8]; // v1
        sct.extend_from_slice(&sha256(&self.spki()));
        sct.extend_from_slice(&millis.to_be_bytes());
        sct.extend_from_slice(&[0, 0]); // no extensions
        sct.extend_from_slice(&[4, 3]); // sha256, ecdsa
        sct.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        sct.extend_from_slice(&sig);
        sct
    }
}

/// The DER extension value of an SCT list holding `scts`.
fn sct_list(scts: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for sct in scts {
        body.extend_from_slice(&(sct.len() as u16).to_be_bytes());
        body.extend_from_slice(sct);
    }
    let mut list = (body.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&body);
    OctetString::new(list).unwrap().to_der().unwrap()
}

/// How an SCT in the leaf's list was made.
#[derive(Clone, Copy)]
enum Sct {
    /// Signed by the log over this leaf's precertificate, timestamped a second after [`ISSUED`].
    Valid,
    /// As `Valid`, with the timestamp changed after signing.
    Tampered,
    /// Signed over another precertificate (another serial number).
    ForAnother,
}

/// A leaf issued by `issuer` from `params`, with one SCT per `scts` entry embedded the way a CA does: sign the
/// precertificate, ask the logs, then sign the final certificate with the SCT list appended. No entries: no list.
fn issue(params: &CertificateParams, key: &KeyPair, issuer: &Ca, scts: &[(&CtLog, Sct)]) -> CertificateDer<'static> {
    if scts.is_empty() {
        return params.signed_by(key, &issuer.issuer()).unwrap().der().clone();
    }
    let list: Vec<Vec<u8>> = scts
        .iter()
        .map(|(log, how)| {
            let mut pre = params.clone();
            if let Sct::ForAnother = how {
                pre.serial_number = Some(SerialNumber::from_slice(&[0x66, 0x66]));
            }
            let precert = pre.signed_by(key, &issuer.issuer()).unwrap();
            let tbs = x509_cert::Certificate::from_der(precert.der()).unwrap().tbs_certificate().to_der().unwrap();
            let mut sct = log.sct(&issuer.spki(), &tbs, (ISSUED as u64 + 1) * 1000);
            if let Sct::Tampered = how {
                sct[40] ^= 1; // last byte of the timestamp
            }
            sct
        })
        .collect();
    let mut params = params.clone();
    params.custom_extensions.push(CustomExtension::from_oid_content(SCT_OID, sct_list(&list)));
    params.signed_by(key, &issuer.issuer()).unwrap().der().clone()
}

const SCT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

fn valid_for(start: i64, end: Option<i64>) -> Value {
    match end {
        Some(end) => json!({"start": rfc3339(start), "end": rfc3339(end)}),
        None => json!({"start": rfc3339(start)}),
    }
}

fn log_entry(spki: &[u8], key_id: &[u8], validity: Value) -> Value {
    json!({
        "baseUrl": "https://log.provgate.test",
        "hashAlgorithm": "SHA2_256",
        "publicKey": {"rawBytes": b64e(spki), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": validity},
        "logId": {"keyId": b64e(key_id)}
    })
}

/// A root CA, an intermediate (pathlen 0) and the logs of one test Sigstore instance.
struct World {
    root: Ca,
    inter: Ca,
    ctlog: CtLog,
    rekor: KeyPair,
}

impl World {
    fn new() -> Self {
        let root = Ca::root(ca_params("root", IsCa::Ca(BasicConstraints::Constrained(1)), CA_USAGES));
        let inter = Ca::under(ca_params("intermediate", IsCa::Ca(BasicConstraints::Constrained(0)), CA_USAGES), &root);
        Self { root, inter, ctlog: CtLog::new(), rekor: KeyPair::generate().unwrap() }
    }

    /// `trusted_root.json` with the CA chain `[intermediate, root]`, the CT log and the Rekor log, all valid from
    /// [`EPOCH`] on.
    fn root_json(&self) -> Value {
        self.root_with(&[&self.inter, &self.root])
    }

    fn root_with(&self, chain: &[&Ca]) -> Value {
        let rekor = self.rekor.subject_public_key_info();
        let chain: Vec<Value> = chain.iter().map(|c| json!({"rawBytes": b64e(&c.der)})).collect();
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log_entry(&rekor, &sha256(&rekor), valid_for(EPOCH, None))],
            "certificateAuthorities": [{
                "subject": {"organization": "provgate.test", "commonName": "root"},
                "uri": "https://fulcio.provgate.test",
                "certChain": {"certificates": chain},
                "validFor": valid_for(EPOCH, None)
            }],
            "ctlogs": [log_entry(&self.ctlog.spki(), &sha256(&self.ctlog.spki()), valid_for(EPOCH, None))],
            "timestampAuthorities": []
        })
    }

    /// A leaf from the intermediate with a valid SCT.
    fn leaf(&self, params: &CertificateParams, key: &KeyPair) -> CertificateDer<'static> {
        issue(params, key, &self.inter, &[(&self.ctlog, Sct::Valid)])
    }

    /// A keyless bundle (DSSE in-toto statement for [`IMAGE`], signed by `key` under `cert`, with a Rekor `dsse` entry
    /// and its SET integrated at `integrated`) judged under `root` for the right identity.
    fn judge_at(&self, root: &Value, cert: &[u8], key: &KeyPair, integrated: i64) -> Result<(), Rejection> {
        let statement = statement_json(IMAGE);
        let sig = key.sign(&pae("application/vnd.in-toto+json", &statement)).unwrap();
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", b64e(cert));
        let body = json!({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {
                "payloadHash": {"algorithm": "sha256", "value": Digest::sha256_of(&statement).hex()},
                "signatures": [{"signature": b64e(&sig), "verifier": b64e(pem.as_bytes())}]
            }
        });
        let body = b64e(body.to_string().as_bytes());
        let log_id = sha256(&self.rekor.subject_public_key_info());
        let entry = json!({"body": body, "integratedTime": integrated, "logID": hex::encode(&log_id), "logIndex": 7});
        let set = self.rekor.sign(&serde_json_canonicalizer::to_vec(&entry).unwrap()).unwrap();
        let bundle = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": b64e(cert)},
                "tlogEntries": [{
                    "logIndex": "7",
                    "logId": {"keyId": b64e(&log_id)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": integrated.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": b64e(&set)},
                    "canonicalizedBody": body
                }]
            },
            "dsseEnvelope": {
                "payloadType": "application/vnd.in-toto+json",
                "payload": b64e(&statement),
                "signatures": [{"sig": b64e(&sig)}]
            }
        });
        let data = bundle.to_string().into_bytes();
        let layer = Layer {
            origin: Origin::Referrer { manifest: Digest::sha256_of(b"m"), artifact_type: None },
            media_type: crate::artifact::media_type::BUNDLE_V03.into(),
            digest: Digest::sha256_of(&data),
            data: data.into(),
            annotations: Default::default(),
        };
        let artifacts = Artifacts { bundles: vec![layer], ..Default::default() };
        let root = Arc::new(
            TrustedRoot::from_json(root.to_string().as_bytes())
                .map_err(|e| Rejection::UntrustedCertificate(format!("test trusted root did not load: {e}")))?,
        );
        let id =
            Identity { subject: IdentityMatcher::Exact(SUBJECT.into()), issuer: IdentityMatcher::Exact(OIDC.into()) };
        let auth = Authority::new("fulcio", Trust::Keyless(Keyless::new(root, vec![id]).unwrap()));
        let image = Digest::parse(&format!("sha256:{IMAGE}")).unwrap();
        attestations(&artifacts, &[image], &[auth]).outcome()
    }

    /// [`Self::judge_at`] a minute after the leaf was issued.
    fn judge(&self, root: &Value, cert: &[u8], key: &KeyPair) -> Result<(), Rejection> {
        self.judge_at(root, cert, key, ISSUED + 60)
    }
}

fn code(r: Result<(), Rejection>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn a_fulcio_shaped_chain_with_a_valid_sct_verifies() {
    let w = World::new();
    let key = KeyPair::generate().unwrap();
    assert_eq!(w.judge(&w.root_json(), &w.leaf(&leaf_params(), &key), &key), Ok(()));
    // Issued straight by the root (no intermediate), as the 2021 public-good Fulcio did.
    let direct = issue(&leaf_params(), &key, &w.root, &[(&w.ctlog, Sct::Valid)]);
    assert_eq!(w.judge(&w.root_with(&[&w.root]), &direct, &key), Ok(()));
    // The same shape from another instance, with the same CA names: not issued by this root's CA.
    let other = World::new();
    assert_eq!(code(w.judge(&w.root_json(), &other.leaf(&leaf_params(), &key), &key)), "untrusted-certificate");
}

#[test]
fn the_leaf_must_be_a_code_signing_end_entity() {
    let w = World::new();
    let key = KeyPair::generate().unwrap();
    let root = w.root_json();
    let mut no_eku = leaf_params();
    no_eku.extended_key_usages = vec![];
    let mut server = leaf_params();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut no_digital_signature = leaf_params();
    no_digital_signature.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    let mut no_key_usage = leaf_params();
    no_key_usage.key_usages = vec![];
    let mut ca = leaf_params();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    for (what, params) in [
        ("no extended key usage", no_eku),
        ("serverAuth only", server),
        ("keyAgreement only", no_digital_signature),
        ("no keyUsage", no_key_usage),
        ("a CA", ca),
    ] {
        let result = w.judge(&root, &w.leaf(&params, &key), &key);
        assert_eq!(code(result.clone()), "leaf-certificate-usage", "leaf with {what}: {result:?}");
    }
}

#[test]
fn every_issuer_must_be_a_ca_allowed_to_sign_certificates() {
    let w = World::new();
    let key = KeyPair::generate().unwrap();
    let judge = |chain: &[&Ca], issuer: &Ca| {
        let leaf = issue(&leaf_params(), &key, issuer, &[(&w.ctlog, Sct::Valid)]);
        w.judge(&w.root_with(chain), &leaf, &key)
    };
    let pathlen0 = IsCa::Ca(BasicConstraints::Constrained(0));
    let cases = [
        ("intermediate without keyCertSign", ca_params("i", pathlen0, &[KeyUsagePurpose::DigitalSignature])),
        ("intermediate without keyUsage", ca_params("i", pathlen0, &[])),
        ("intermediate that is not a CA", ca_params("i", IsCa::ExplicitNoCa, CA_USAGES)),
    ];
    for (what, params) in cases {
        let inter = Ca::under(params, &w.root);
        assert_eq!(code(judge(&[&inter, &w.root], &inter)), "ca-constraints", "{what}");
    }
    // A root with path length 0 may not have an intermediate under it; nor may a pathlen-0 intermediate.
    let strict = Ca::root(ca_params("strict", IsCa::Ca(BasicConstraints::Constrained(0)), CA_USAGES));
    let inter = Ca::under(ca_params("i", pathlen0, CA_USAGES), &strict);
    assert_eq!(code(judge(&[&inter, &strict], &inter)), "ca-constraints", "root pathlen 0");
    let second = Ca::under(ca_params("i2", pathlen0, CA_USAGES), &w.inter);
    assert_eq!(code(judge(&[&second, &w.inter, &w.root], &second)), "ca-constraints", "intermediate pathlen 0");
    // A root without keyCertSign.
    let bare = Ca::root(ca_params("bare", IsCa::Ca(BasicConstraints::Unconstrained), &[KeyUsagePurpose::CrlSign]));
    assert_eq!(code(judge(&[&bare], &bare)), "ca-constraints", "root without keyCertSign");
    // The same shapes with the right usages verify.
    let good = Ca::under(ca_params("i", pathlen0, CA_USAGES), &w.root);
    assert_eq!(judge(&[&good, &w.root], &good), Ok(()));
}

#[test]
fn trusted_root_entries_count_only_inside_their_valid_for() {
    let w = World::new();
    let key = KeyPair::generate().unwrap();
    let leaf = w.leaf(&leaf_params(), &key);
    assert_eq!(w.judge(&w.root_json(), &leaf, &key), Ok(()));
    // The CA entry ended before the leaf was issued; or starts after.
    for window in [valid_for(EPOCH, Some(ISSUED - 1)), valid_for(ISSUED + 1, None)] {
        let mut root = w.root_json();
        root["certificateAuthorities"][0]["validFor"] = window.clone();
        let result = w.judge(&root, &leaf, &key);
        assert_eq!(code(result.clone()), "trusted-root-validity", "CA {window}: {result:?}");
    }
    // The Rekor key's validity ended before the entry was integrated.
    let mut root = w.root_json();
    root["tlogs"][0]["publicKey"]["validFor"] = valid_for(EPOCH, Some(ISSUED + 30));
    let result = w.judge(&root, &leaf, &key);
    assert_eq!(code(result.clone()), "trusted-root-validity", "{result:?}");
    assert!(result.unwrap_err().to_string().contains("Rekor"));
    // The CT log's validity starts after the SCT's timestamp.
    let mut root = w.root_json();
    root["ctlogs"][0]["publicKey"]["validFor"] = valid_for(ISSUED + 2, None);
    let result = w.judge(&root, &leaf, &key);
    assert_eq!(code(result.clone()), "trusted-root-validity", "{result:?}");
    assert!(result.unwrap_err().to_string().contains("CT log"));
}

#[test]
fn the_embedded_sct_must_come_from_a_trusted_ct_log_and_verify() {
    let w = World::new();
    let key = KeyPair::generate().unwrap();
    let root = w.root_json();
    let params = leaf_params();
    // No SCT while the trusted root lists CT logs.
    let none = issue(&params, &key, &w.inter, &[]);
    assert_eq!(code(w.judge(&root, &none, &key)), "missing-sct");
    // A root that lists no CT log does not ask for one.
    let mut no_ctlogs = root.clone();
    no_ctlogs["ctlogs"] = json!([]);
    assert_eq!(w.judge(&no_ctlogs, &none, &key), Ok(()));
    // An SCT signed by a log the trusted root does not list.
    let stranger = CtLog::new();
    let unknown = issue(&params, &key, &w.inter, &[(&stranger, Sct::Valid)]);
    let result = w.judge(&root, &unknown, &key);
    assert_eq!(code(result.clone()), "sct-unknown-log", "{result:?}");
    assert!(result.unwrap_err().to_string().contains(&hex::encode(sha256(&stranger.spki()))));
    // The trusted log's SCT with its timestamp changed after signing; or over another precertificate.
    assert_eq!(
        code(w.judge(&root, &issue(&params, &key, &w.inter, &[(&w.ctlog, Sct::Tampered)]), &key)),
        "sct-invalid"
    );
    assert_eq!(
        code(w.judge(&root, &issue(&params, &key, &w.inter, &[(&w.ctlog, Sct::ForAnother)]), &key)),
        "sct-invalid"
    );
    // An SCT made by the right log but under another issuer key (the root's, not the intermediate's).
    let pre = params.signed_by(&key, &w.inter.issuer()).unwrap();
    let tbs = x509_cert::Certificate::from_der(pre.der()).unwrap().tbs_certificate().to_der().unwrap();
    let sct = w.ctlog.sct(&w.root.spki(), &tbs, (ISSUED as u64 + 1) * 1000);
    let mut wrong_issuer = params.clone();
    wrong_issuer.custom_extensions.push(CustomExtension::from_oid_content(SCT_OID, sct_list(&[sct])));
    let cert = wrong_issuer.signed_by(&key, &w.inter.issuer()).unwrap();
    assert_eq!(code(w.judge(&root, cert.der(), &key)), "sct-invalid");
    // A malformed SCT list: its length prefix disagrees with its contents; an SCT list that is not an OCTET STRING.
    for content in [OctetString::new(vec![0, 9, 0, 1, 0]).unwrap().to_der().unwrap(), vec![0x05, 0x00]] {
        let mut malformed = params.clone();
        malformed.custom_extensions.push(CustomExtension::from_oid_content(SCT_OID, content));
        let cert = malformed.signed_by(&key, &w.inter.issuer()).unwrap();
        assert_eq!(code(w.judge(&root, cert.der(), &key)), "sct-invalid");
    }
    // A valid SCT next to an unknown log's: one trusted SCT is enough, in either order.
    let both = issue(&params, &key, &w.inter, &[(&stranger, Sct::Valid), (&w.ctlog, Sct::Valid)]);
    assert_eq!(w.judge(&root, &both, &key), Ok(()));
    // A tampered SCT from the trusted log is reported as such even next to an unknown log's.
    let bad = issue(&params, &key, &w.inter, &[(&w.ctlog, Sct::Tampered), (&stranger, Sct::Valid)]);
    assert_eq!(code(w.judge(&root, &bad, &key)), "sct-invalid");
}
