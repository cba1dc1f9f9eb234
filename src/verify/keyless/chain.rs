//! Fulcio certificate paths. rustls-webpki builds and checks the path from the leaf to a trusted-root CA at the
//! leaf's issuance time (signatures, issuer names, validity, basicConstraints and path lengths of intermediates,
//! unknown critical extensions, extended key usage nesting); this module adds what webpki leaves out: the leaf's
//! code-signing usages, keyUsage keyCertSign and basicConstraints on every issuer including the trust anchor, the
//! anchor's validity, and the CA entry's `validFor`.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::der::oid::db::rfc5280::ID_KP_CODE_SIGNING;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};

use crate::verify::reason::Rejection;
use crate::verify::trusted_root::Ca;

const NOT_ISSUED: &str = "not issued by any certificate authority in the trusted root";

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents, for webpki.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A leaf that chained: its validity (Unix seconds) and the certificate that issued it.
pub(super) struct Path<'r> {
    pub validity: (i64, i64),
    pub issuer: &'r Certificate,
}

/// How telling a failure against one CA is, to report the best one when no CA verifies the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Depth {
    /// The CA did not issue the leaf.
    NotIssued,
    /// The path breaks a rule webpki checks.
    Path,
    /// The path verified, and a rule checked here after it failed.
    Verified,
}

/// Verifies `leaf` as a code-signing leaf issued by one of `cas`, at the time it was issued (its notBefore).
pub(super) fn verify<'r>(cas: &'r [Ca], leaf: &Certificate, leaf_der: &[u8]) -> Result<Path<'r>, Rejection> {
    leaf_usage(leaf)?;
    let validity = leaf.tbs_certificate().validity();
    let not_before = validity.not_before.to_unix_duration();
    let issued = secs(not_before);
    let not_after = secs(validity.not_after.to_unix_duration());
    let der = CertificateDer::from(leaf_der);
    let ee = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Rejection::UntrustedCertificate(format!("leaf certificate cannot be parsed: {e}")))?;
    let time = UnixTime::since_unix_epoch(not_before);
    let mut best = (Depth::NotIssued, Rejection::UntrustedCertificate(NOT_ISSUED.into()));
    for ca in cas {
        match issued_by(ca, &ee, time, issued) {
            Ok(issuer) => return Ok(Path { validity: (issued, not_after), issuer }),
            Err(failure) if failure.0 > best.0 => best = failure,
            Err(_) => {}
        }
    }
    Err(best.1)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The leaf's issuer when `ca` verifies the leaf at `time` and `ca` may vouch then.
fn issued_by<'r>(
    ca: &'r Ca,
    ee: &webpki::EndEntityCert<'_>,
    time: UnixTime,
    issued: i64,
) -> Result<&'r Certificate, (Depth, Rejection)> {
    let (Some((anchor_der, intermediates)), Some(anchor)) = (ca.der.split_last(), ca.chain.last()) else {
        return Err((Depth::NotIssued, Rejection::UntrustedCertificate(NOT_ISSUED.into())));
    };
    let anchors = [webpki::anchor_from_trusted_cert(anchor_der)
        .map_err(|e| (Depth::NotIssued, Rejection::UntrustedCertificate(format!("trust anchor: {e}"))))?];
    let usage = webpki::KeyUsage::required_if_present(CODE_SIGNING);
    let algs = webpki::ALL_VERIFICATION_ALGS;
    let path = ee.verify_for_usage(algs, &anchors, intermediates, time, usage, None, None).map_err(path_error)?;
    // From the leaf's issuer up to the anchor (webpki yields intermediates from the leaf upwards).
    let mut issuers = Vec::new();
    for cert in path.intermediate_certificates() {
        let at = ca.der.iter().position(|d| *d == cert.der());
        let parsed = at.and_then(|i| ca.chain.get(i));
        issuers.push(parsed.ok_or((Depth::NotIssued, Rejection::UntrustedCertificate(NOT_ISSUED.into())))?);
    }
    issuers.push(anchor);
    ca.window.check(|| ca.name(), issued, "when the leaf certificate was issued").map_err(|e| (Depth::Verified, e))?;
    issuer_constraints(&issuers, issued).map_err(|e| (Depth::Verified, e))?;
    Ok(issuers[0])
}

fn path_error(e: webpki::Error) -> (Depth, Rejection) {
    use webpki::Error as E;
    let ca = |m: &str| (Depth::Path, Rejection::CaConstraints(m.into()));
    match e {
        E::UnknownIssuer
        | E::InvalidSignatureForPublicKey
        | E::SignatureAlgorithmMismatch
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            (Depth::NotIssued, Rejection::UntrustedCertificate(NOT_ISSUED.into()))
        }
        E::CaUsedAsEndEntity => {
            (Depth::Path, Rejection::LeafCertificateUsage("it is a CA certificate (basicConstraints CA:TRUE)".into()))
        }
        E::EndEntityUsedAsCa => ca("an intermediate certificate is not a CA (basicConstraints CA:TRUE missing)"),
        E::PathLenConstraintViolated => ca("an intermediate certificate's path length constraint is exceeded"),
        E::RequiredEkuNotFoundContext(_) => ca("an intermediate certificate's extended key usage excludes codeSigning"),
        E::CertExpired { .. } | E::CertNotValidYet { .. } => (
            Depth::Path,
            Rejection::UntrustedCertificate(
                "an intermediate certificate was not valid when the leaf was issued".into(),
            ),
        ),
        other => (Depth::Path, Rejection::UntrustedCertificate(format!("certificate path: {other}"))),
    }
}

/// Fulcio leaves sign code: not a CA, keyUsage digitalSignature, extended key usage codeSigning.
fn leaf_usage(leaf: &Certificate) -> Result<(), Rejection> {
    let tbs = leaf.tbs_certificate();
    let bad = |m: &str| Err(Rejection::LeafCertificateUsage(m.into()));
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => return bad("it is a CA certificate (basicConstraints CA:TRUE)"),
        Ok(_) => {}
        Err(_) => return bad("its basicConstraints extension is malformed or repeated"),
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if ku.digital_signature() => {}
        Ok(Some(_)) => return bad("its keyUsage lacks digitalSignature"),
        Ok(None) => return bad("it has no keyUsage extension"),
        Err(_) => return bad("its keyUsage extension is malformed or repeated"),
    }
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku))) if eku.0.contains(&ID_KP_CODE_SIGNING) => Ok(()),
        Ok(Some(_)) => bad("its extended key usage lacks codeSigning"),
        Ok(None) => bad("it has no extended key usage extension"),
        Err(_) => bad("its extended key usage extension is malformed or repeated"),
    }
}

/// Every issuer (from the leaf's issuer up to the anchor) is a CA allowed to sign certificates, within its path
/// length; webpki does not check keyUsage at all, nor anything of the anchor, whose validity is checked here.
fn issuer_constraints(issuers: &[&Certificate], issued: i64) -> Result<(), Rejection> {
    for (below, cert) in issuers.iter().enumerate() {
        let tbs = cert.tbs_certificate();
        let name = tbs.subject().to_string();
        let bad = |m: String| Err(Rejection::CaConstraints(format!("issuer {name:?} {m}")));
        match tbs.get_extension::<BasicConstraints>() {
            Ok(Some((_, bc))) if bc.ca => {
                if let Some(max) = bc.path_len_constraint.filter(|max| below > usize::from(*max)) {
                    return bad(format!("allows {max} intermediate certificate(s) below it, the path has {below}"));
                }
            }
            Ok(_) => return bad("is not a CA (basicConstraints CA:TRUE missing)".into()),
            Err(_) => return bad("has a malformed or repeated basicConstraints extension".into()),
        }
        match tbs.get_extension::<KeyUsage>() {
            Ok(Some((_, ku))) if ku.key_cert_sign() => {}
            Ok(_) => return bad("lacks keyUsage keyCertSign".into()),
            Err(_) => return bad("has a malformed or repeated keyUsage extension".into()),
        }
    }
    if let Some(anchor) = issuers.last() {
        let v = anchor.tbs_certificate().validity();
        let (from, until) = (secs(v.not_before.to_unix_duration()), secs(v.not_after.to_unix_duration()));
        if issued < from || issued > until {
            let name = anchor.tbs_certificate().subject().to_string();
            let m = format!("root certificate {name:?} was not valid when the leaf certificate was issued");
            return Err(Rejection::UntrustedCertificate(m));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_signing_oid_bytes_are_the_der_of_id_kp_code_signing() {
        assert_eq!(CODE_SIGNING, ID_KP_CODE_SIGNING.as_bytes());
    }
}
