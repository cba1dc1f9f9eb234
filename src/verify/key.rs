//! Public keys: PEM parsing (PKIX `PUBLIC KEY` and certificates), fingerprints, and signature checks over every
//! scheme cosign and Tekton Chains produce (sigstore where it covers the scheme, aws-lc / dalek for the rest).

use std::fmt;
use std::sync::Arc;

use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

/// Why key material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM block found (want -----BEGIN PUBLIC KEY----- or a CERTIFICATE)")]
    NoPem,
    #[error("PEM block {0:?} is not a public key or certificate (private keys are never accepted here)")]
    WrongPemType(String),
    #[error("not a valid SubjectPublicKeyInfo: {0}")]
    Spki(String),
    #[error("not a valid X.509 certificate: {0}")]
    Certificate(String),
    #[error("unsupported key algorithm {0} (want ECDSA P-256/P-384/P-521, RSA or Ed25519)")]
    Unsupported(String),
}

/// The algorithm family of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa,
    Ed25519,
}

/// The exact scheme a signature verified under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    /// P-384 with SHA-256, as Tekton Chains' x509 signer writes it.
    EcdsaP384Sha256,
    EcdsaP521Sha512,
    RsaPkcs1Sha256,
    RsaPssSha256,
    Ed25519,
    /// Ed25519ph (SHA-512 pre-hash), as cosign writes for key files.
    Ed25519ph,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Self::EcdsaP384Sha256 => "ecdsa-p384-sha256",
            Self::EcdsaP521Sha512 => "ecdsa-p521-sha512",
            Self::RsaPkcs1Sha256 => "rsa-pkcs1v15-sha256",
            Self::RsaPssSha256 => "rsa-pss-sha256",
            Self::Ed25519 => "ed25519",
            Self::Ed25519ph => "ed25519ph",
        })
    }
}

/// A parsed, fingerprinted public key. Cheap to clone (two counts); parse once when a key source changes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    spki_der: Arc<[u8]>,
    kind: KeyKind,
    fingerprint: Arc<str>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?}, {})", self.kind, self.fingerprint)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.short_fingerprint())
    }
}

impl PublicKey {
    /// Parses the first public key or certificate in `pem` (a certificate contributes its subject key).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let mut reader = pem;
        let mut seen = None;
        for item in rustls_pemfile::read_all(&mut reader) {
            match item {
                Ok(rustls_pemfile::Item::SubjectPublicKeyInfo(spki)) => return Self::from_spki_der(spki.as_ref()),
                Ok(rustls_pemfile::Item::X509Certificate(cert)) => return Self::from_certificate_der(cert.as_ref()),
                Ok(other) => seen = Some(pem_label(&other)),
                Err(_) => return Err(KeyError::NoPem),
            }
        }
        Err(seen.map_or(KeyError::NoPem, |label| KeyError::WrongPemType(label.to_owned())))
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| KeyError::Spki(e.to_string()))?;
        Self::from_spki(&spki)
    }

    /// The subject public key of a DER certificate (the certificate is not validated here).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, KeyError> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| KeyError::Certificate(e.to_string()))?;
        Self::from_spki(cert.tbs_certificate().subject_public_key_info())
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, KeyError> {
        let der = spki.to_der().map_err(|e| KeyError::Spki(e.to_string()))?;
        let alg = spki.algorithm.oid.to_string();
        let kind = match alg.as_str() {
            OID_RSA => KeyKind::Rsa,
            OID_ED25519 => KeyKind::Ed25519,
            OID_EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
                    .map(|oid| oid.to_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_P256 => KeyKind::EcdsaP256,
                    OID_P384 => KeyKind::EcdsaP384,
                    OID_P521 => KeyKind::EcdsaP521,
                    other => return Err(KeyError::Unsupported(format!("EC curve {other:?}"))),
                }
            }
            other => return Err(KeyError::Unsupported(other.to_owned())),
        };
        let fingerprint = crate::images::Digest::sha256_of(&der).to_string().into();
        Ok(Self { spki_der: der.into(), kind, fingerprint })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `sha256:<hex of sha256(SPKI DER)>`: stable across PEM formatting; use it in cache keys.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `sha256:` and the first 12 hex characters, for messages.
    pub fn short_fingerprint(&self) -> String {
        let end = self.fingerprint.len().min("sha256:".len() + 12);
        format!("{}…", self.fingerprint.get(..end).unwrap_or(&self.fingerprint))
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Checks a raw signature over `msg`, trying each scheme producers use for this key type.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Option<Scheme> {
        let by_sigstore = |scheme: SigningScheme| {
            CosignVerificationKey::from_der(&self.spki_der, &scheme)
                .and_then(|k| k.verify_signature(Signature::Raw(sig), msg))
                .is_ok()
        };
        let candidates: &[Scheme] = match self.kind {
            KeyKind::EcdsaP256 => &[Scheme::EcdsaP256Sha256],
            KeyKind::EcdsaP384 => &[Scheme::EcdsaP384Sha384, Scheme::EcdsaP384Sha256],
            KeyKind::EcdsaP521 => &[Scheme::EcdsaP521Sha512],
            KeyKind::Rsa => &[Scheme::RsaPkcs1Sha256, Scheme::RsaPssSha256],
            KeyKind::Ed25519 => &[Scheme::Ed25519, Scheme::Ed25519ph],
        };
        candidates.iter().copied().find(|scheme| match scheme {
            Scheme::EcdsaP256Sha256 => by_sigstore(SigningScheme::ECDSA_P256_SHA256_ASN1),
            Scheme::EcdsaP384Sha384 => by_sigstore(SigningScheme::ECDSA_P384_SHA384_ASN1),
            Scheme::EcdsaP521Sha512 => by_sigstore(SigningScheme::ECDSA_P521_SHA512_ASN1),
            Scheme::RsaPkcs1Sha256 => by_sigstore(SigningScheme::RSA_PKCS1_SHA256(0)),
            Scheme::RsaPssSha256 => {
                by_sigstore(SigningScheme::RSA_PSS_SHA256(0)) || rsa_pss_max_salt(&self.spki_der, msg, sig)
            }
            Scheme::Ed25519 => by_sigstore(SigningScheme::ED25519),
            Scheme::EcdsaP384Sha256 => aws_lc(&aws_lc_rs::signature::ECDSA_P384_SHA256_ASN1, &self.spki_der, msg, sig),
            Scheme::Ed25519ph => self.verify_ed25519ph(msg, sig),
        })
    }

    /// Verifies with one named algorithm (used for X.509 and Rekor signatures, whose algorithm is fixed).
    pub(crate) fn verify_exact(&self, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
        use aws_lc_rs::signature as s;
        match (self.kind, scheme) {
            (KeyKind::EcdsaP256, Scheme::EcdsaP256Sha256) => {
                aws_lc(&s::ECDSA_P256_SHA256_ASN1, &self.spki_der, msg, sig)
            }
            (KeyKind::EcdsaP384, Scheme::EcdsaP384Sha384) => {
                aws_lc(&s::ECDSA_P384_SHA384_ASN1, &self.spki_der, msg, sig)
            }
            (KeyKind::EcdsaP384, Scheme::EcdsaP384Sha256) => {
                aws_lc(&s::ECDSA_P384_SHA256_ASN1, &self.spki_der, msg, sig)
            }
            (KeyKind::EcdsaP256, Scheme::EcdsaP384Sha384) => {
                aws_lc(&s::ECDSA_P256_SHA384_ASN1, &self.spki_der, msg, sig)
            }
            (KeyKind::EcdsaP521, Scheme::EcdsaP521Sha512) => {
                aws_lc(&s::ECDSA_P521_SHA512_ASN1, &self.spki_der, msg, sig)
            }
            (KeyKind::Rsa, _) | (KeyKind::Ed25519, _) => self.verify(msg, sig) == Some(scheme),
            _ => false,
        }
    }

    fn verify_ed25519ph(&self, msg: &[u8], sig: &[u8]) -> bool {
        use ed25519_dalek::Digest as _;
        let Ok(spki) = SubjectPublicKeyInfoOwned::from_der(&self.spki_der) else { return false };
        let Some(raw) = spki.subject_public_key.as_bytes() else { return false };
        let Ok(key) = ed25519_dalek::VerifyingKey::try_from(raw) else { return false };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else { return false };
        let mut prehash = ed25519_dalek::Sha512::new();
        prehash.update(msg);
        key.verify_prehashed(prehash, None, &sig).is_ok()
    }
}

fn aws_lc(alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm, spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    aws_lc_rs::signature::UnparsedPublicKey::new(alg, spki).verify(msg, sig).is_ok()
}

/// RSA-PSS with the largest salt the key allows: what Go's `rsa.SignPSS` writes with `PSSSaltLengthAuto` (cosign);
/// aws-lc only accepts a salt as long as the hash.
fn rsa_pss_max_salt(spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    use sha2::Digest as _;
    let Ok(key) = rsa::RsaPublicKey::from_public_key_der(spki) else { return false };
    let em_len = (key.n().bits() - 1).div_ceil(8);
    let Some(salt) = em_len.checked_sub(32 + 2) else { return false };
    key.verify(rsa::Pss::new_with_salt::<sha2::Sha256>(salt), &sha2::Sha256::digest(msg), sig).is_ok()
}

fn pem_label(item: &rustls_pemfile::Item) -> &'static str {
    match item {
        rustls_pemfile::Item::Pkcs1Key(_) => "RSA PRIVATE KEY",
        rustls_pemfile::Item::Pkcs8Key(_) => "PRIVATE KEY",
        rustls_pemfile::Item::Sec1Key(_) => "EC PRIVATE KEY",
        rustls_pemfile::Item::Crl(_) => "X509 CRL",
        rustls_pemfile::Item::Csr(_) => "CERTIFICATE REQUEST",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSYBOX_PUB: &[u8] = include_bytes!("../../tests/fixtures/vectors/sigstore-rs/key-signed-busybox.pub.pem");

    #[test]
    fn parses_p256_and_fingerprints_the_spki() {
        let key = PublicKey::from_pem(BUSYBOX_PUB).unwrap();
        assert_eq!(key.kind(), KeyKind::EcdsaP256);
        assert!(key.fingerprint().starts_with("sha256:") && key.fingerprint().len() == 71);
        assert_eq!(crate::images::Digest::sha256_of(key.spki_der()).to_string(), key.fingerprint());
        let reformatted = String::from_utf8(BUSYBOX_PUB.to_vec()).unwrap().replace('\n', "\r\n");
        assert_eq!(PublicKey::from_pem(reformatted.as_bytes()).unwrap(), key);
    }

    /// A certificate given as a key contributes its subject key (the chain is not checked on this path).
    #[test]
    fn certificate_pem_gives_its_key() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors/sigstore-rs");
        let cert = std::fs::read(format!("{dir}/keyless-disallow-service-nodeport.cert.pem")).unwrap();
        let payload = std::fs::read(format!("{dir}/keyless-disallow-service-nodeport.payload.json")).unwrap();
        let sig = std::fs::read_to_string(format!("{dir}/keyless-disallow-service-nodeport.signature.b64")).unwrap();
        let key = PublicKey::from_pem(&cert).unwrap();
        assert_eq!(key.kind(), KeyKind::EcdsaP256);
        let sig = crate::verify::b64(&sig).unwrap();
        assert_eq!(key.verify(&payload, &sig), Some(Scheme::EcdsaP256Sha256));
    }

    /// cosign signs with Ed25519ph for key files: signatures made by ed25519-dalek's pre-hashed signer verify, pure
    /// ones too, and neither verifies another message.
    #[test]
    fn ed25519_pure_and_prehashed() {
        use ed25519_dalek::Digest as _;
        use ed25519_dalek::Signer as _;
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pem = signing.verifying_key().to_public_key_pem(Default::default()).unwrap();
        let key = PublicKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.kind(), KeyKind::Ed25519);
        let msg = b"{\"critical\":{}}";
        let pure = signing.sign(msg).to_bytes();
        let mut prehash = ed25519_dalek::Sha512::new();
        prehash.update(msg);
        let ph = signing.sign_prehashed(prehash, None).unwrap().to_bytes();
        assert_eq!(key.verify(msg, &pure), Some(Scheme::Ed25519));
        assert_eq!(key.verify(msg, &ph), Some(Scheme::Ed25519ph));
        assert_eq!(key.verify(b"{}", &pure), None);
        assert_eq!(key.verify(b"{}", &ph), None);
    }

    #[test]
    fn rejects_private_keys_and_garbage() {
        let private = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(PublicKey::from_pem(private), Err(KeyError::WrongPemType("PRIVATE KEY".into())));
        assert_eq!(PublicKey::from_pem(b"hello"), Err(KeyError::NoPem));
        let bad = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(PublicKey::from_pem(bad), Err(KeyError::Spki(_))));
    }
}
