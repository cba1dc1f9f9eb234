//! The renewal decision (pure): from what the Secret holds and the time, the one step to take next, and the
//! material that step writes.

use std::net::IpAddr;
use std::time::Duration;

use super::material::{Facts, Material, MaterialError, pem_of};
use crate::certs::{self, CaPair};

/// Lifetimes and margins of the managed certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// The serving certificate's lifetime.
    pub validity: Duration,
    /// The serving certificate is renewed when less than this remains.
    pub renew_before: Duration,
    /// The CA's lifetime.
    pub ca_validity: Duration,
    /// A new CA is added to the bundle when less than this remains of the signing CA.
    pub ca_renew_before: Duration,
    /// How long a new CA sits in the published bundle before it signs the serving certificate.
    pub ca_handover: Duration,
}

/// The one step to take next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Keep,
    /// No Secret: make a CA and a serving pair.
    Create,
    /// The Secret cannot be served (the reason): make a CA and a serving pair in its place.
    Replace(String),
    /// A new serving certificate from the same CA (the reason).
    RenewLeaf(&'static str),
    /// The signing CA nears its end: publish a new CA beside it, not yet signing.
    AddNextCa,
    /// The new CA has been published for the handover period: it signs a new serving certificate and becomes the
    /// signing CA; the old one stays in the bundle while serving certificates it signed may still be in use.
    PromoteNextCa,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The next step for a Secret that is absent (`None`), unusable or valid (`Facts`) at `now` (Unix seconds).
/// `next_published` says whether every named webhook configuration already carries the next CA.
pub fn decide(
    state: Option<&Result<Facts, MaterialError>>,
    now: i64,
    lifetimes: &Lifetimes,
    next_published: bool,
) -> Step {
    let facts = match state {
        None => return Step::Create,
        Some(Err(e)) => return Step::Replace(e.to_string()),
        Some(Ok(facts)) => facts,
    };
    match facts.next_since {
        Some(since) if next_published && now.saturating_sub(since) >= secs(lifetimes.ca_handover) => {
            return Step::PromoteNextCa;
        }
        None if facts.ca_not_after.saturating_sub(now) < secs(lifetimes.ca_renew_before) => return Step::AddNextCa,
        _ => {}
    }
    if !facts.names_ok {
        return Step::RenewLeaf("it does not cover the Service's names");
    }
    if facts.leaf_not_after.saturating_sub(now) < secs(lifetimes.renew_before) {
        return Step::RenewLeaf("it expires within renewBefore");
    }
    Step::Keep
}

/// Who the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The material `step` writes, from `current` (required for every step but `Create` and `Replace`).
/// `None` for `Keep`.
pub fn material_for(
    step: &Step,
    current: Option<&Material>,
    now: time::OffsetDateTime,
    names: &Names,
    lifetimes: &Lifetimes,
) -> Result<Option<Material>, rcgen::Error> {
    let validity = to_time(lifetimes.validity);
    let ca_validity = to_time(lifetimes.ca_validity);
    let issue = |ca: &CaPair| -> Result<(String, String), rcgen::Error> {
        certs::issue_serving(ca, ca_not_after(ca)?, &names.dns, &names.ips, now, validity)
    };
    let fresh = || -> Result<Option<Material>, rcgen::Error> {
        let ca = certs::new_ca(now, ca_validity)?;
        let (cert_pem, key_pem) = issue(&ca)?;
        let bundle = vec![canonical(&ca.cert_pem)];
        Ok(Some(Material { cert_pem, key_pem, ca, next: None, bundle }))
    };
    let Some(current) = current else {
        return match step {
            Step::Keep => Ok(None),
            _ => fresh(),
        };
    };
    match step {
        Step::Keep => Ok(None),
        Step::Create | Step::Replace(_) => fresh(),
        Step::RenewLeaf(_) => {
            let (cert_pem, key_pem) = issue(&current.ca)?;
            Ok(Some(Material { cert_pem, key_pem, ..current.clone() }))
        }
        Step::AddNextCa => {
            let next = certs::new_ca(now, ca_validity)?;
            let signing = canonical(&current.ca.cert_pem);
            // The signing CA, one previous CA still trusted (if any), then the next one.
            let mut bundle = vec![signing.clone()];
            bundle.extend(current.bundle.iter().filter(|pem| **pem != signing).take(1).cloned());
            bundle.push(canonical(&next.cert_pem));
            Ok(Some(Material { next: Some((next, now.unix_timestamp())), bundle, ..current.clone() }))
        }
        Step::PromoteNextCa => {
            let Some((next, _)) = &current.next else { return Ok(None) };
            let (cert_pem, key_pem) = issue(next)?;
            let bundle = vec![canonical(&next.cert_pem), canonical(&current.ca.cert_pem)];
            Ok(Some(Material { cert_pem, key_pem, ca: next.clone(), next: None, bundle }))
        }
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// A CA certificate's PEM in the canonical form bundles use.
fn canonical(pem: &str) -> String {
    match rustls_pemfile::certs(&mut pem.as_bytes()).next() {
        Some(Ok(der)) => pem_of(der.as_ref()),
        _ => pem.to_owned(),
    }
}

/// A CA's notAfter (new serving certificates never outlive it).
fn ca_not_after(ca: &CaPair) -> Result<time::OffsetDateTime, rcgen::Error> {
    use x509_cert::der::Decode as _;
    let der = rustls_pemfile::certs(&mut ca.cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or(rcgen::Error::CouldNotParseCertificate)?;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    let secs = cert.tbs_certificate().validity().not_after.to_unix_duration().as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;
    const NOW: i64 = 1_800_000_000;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            validity: Duration::from_secs(90 * DAY),
            renew_before: Duration::from_secs(30 * DAY),
            ca_validity: Duration::from_secs(3650 * DAY),
            ca_renew_before: Duration::from_secs(365 * DAY),
            ca_handover: Duration::from_secs(300),
        }
    }

    type Case = (&'static str, Option<Result<Facts, MaterialError>>, bool, Step);

    fn facts(leaf_days: i64, ca_days: i64, next_since: Option<i64>) -> Facts {
        let day = 24 * 3600;
        Facts { leaf_not_after: NOW + leaf_days * day, ca_not_after: NOW + ca_days * day, next_since, names_ok: true }
    }

    #[test]
    fn the_step_follows_from_not_after_now_and_the_margins() {
        let l = lifetimes();
        let broken = Err(MaterialError::Missing("tls.key"));
        let table: Vec<Case> = vec![
            ("absent", None, false, Step::Create),
            ("unusable", Some(broken), false, Step::Replace("key tls.key is missing".into())),
            ("fresh", Some(Ok(facts(89, 3000, None))), true, Step::Keep),
            ("31 days left", Some(Ok(facts(31, 3000, None))), true, Step::Keep),
            ("29 days left", Some(Ok(facts(29, 3000, None))), true, Step::RenewLeaf("it expires within renewBefore")),
            ("expired", Some(Ok(facts(-1, 3000, None))), true, Step::RenewLeaf("it expires within renewBefore")),
            ("CA has 364 days", Some(Ok(facts(80, 364, None))), true, Step::AddNextCa),
            ("CA has 366 days", Some(Ok(facts(80, 366, None))), true, Step::Keep),
            // A rollover: the new CA waits out the handover, and only once every webhook carries it.
            ("next CA just added", Some(Ok(facts(80, 364, Some(NOW - 10)))), true, Step::Keep),
            ("handover over", Some(Ok(facts(80, 364, Some(NOW - 300)))), true, Step::PromoteNextCa),
            ("handover over, not published", Some(Ok(facts(80, 364, Some(NOW - 300)))), false, Step::Keep),
            (
                "leaf renewal during the handover",
                Some(Ok(facts(2, 364, Some(NOW - 10)))),
                true,
                Step::RenewLeaf("it expires within renewBefore"),
            ),
        ];
        for (name, state, published, want) in table {
            assert_eq!(decide(state.as_ref(), NOW, &l, published), want, "{name}");
        }
        let mut wrong_names = facts(80, 3000, None);
        wrong_names.names_ok = false;
        assert_eq!(
            decide(Some(&Ok(wrong_names)), NOW, &l, true),
            Step::RenewLeaf("it does not cover the Service's names")
        );
        // The test knob: renewBefore at least validity renews at every check.
        let always = Lifetimes { renew_before: l.validity, ..l };
        assert!(matches!(decide(Some(&Ok(facts(89, 3000, None))), NOW, &always, true), Step::RenewLeaf(_)));
    }

    fn names() -> Names {
        Names { dns: crate::certs::service_names("provgate", "provgate-system"), ips: vec![] }
    }

    fn write(step: &Step, current: Option<&Material>, at: i64) -> Material {
        let now = time::OffsetDateTime::from_unix_timestamp(at).unwrap();
        material_for(step, current, now, &names(), &lifetimes()).unwrap().unwrap()
    }

    fn check(m: &Material, at: i64) -> Facts {
        m.check(at, &names().dns, &names().ips).unwrap()
    }

    /// Whether a client trusting `bundle` accepts the serving certificate of `m`.
    fn trusted(bundle: &[String], m: &Material) -> bool {
        bundle.iter().any(|ca| {
            let der = rustls_pemfile::certs(&mut ca.as_bytes()).next().unwrap().unwrap();
            let leaf = rustls_pemfile::certs(&mut m.cert_pem.as_bytes()).next().unwrap().unwrap();
            let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
            super::super::material::serves_under(&ee, &der, NOW).is_ok()
        })
    }

    #[test]
    fn through_a_ca_rollover_every_published_bundle_trusts_every_pair_that_may_still_serve() {
        let created = write(&Step::Create, None, NOW);
        let f = check(&created, NOW);
        assert_eq!(created.bundle.len(), 1);
        assert_eq!(f.leaf_not_after - NOW, (90 * DAY) as i64, "the serving certificate lives `validity`");

        // Leaf renewal: same CA, same bundle; the old pair is still trusted.
        let renewed = write(&Step::RenewLeaf("test"), Some(&created), NOW + 1);
        assert_eq!(renewed.bundle, created.bundle);
        assert_ne!(renewed.cert_pem, created.cert_pem);
        assert!(trusted(&renewed.bundle, &created) && trusted(&renewed.bundle, &renewed));

        // Phase 1: the next CA joins the bundle; the serving pair is unchanged.
        let added = write(&Step::AddNextCa, Some(&renewed), NOW + 2);
        check(&added, NOW + 2);
        assert_eq!(added.cert_pem, renewed.cert_pem, "the next CA does not sign yet");
        assert_eq!(added.bundle.len(), 2);
        let next = &added.next.as_ref().unwrap().0;
        assert!(added.bundle.contains(&pem_of_first(&next.cert_pem)));

        // Phase 2: the next CA signs; the old CA stays so pods still serving the old pair are trusted.
        let promoted = write(&Step::PromoteNextCa, Some(&added), NOW + 400);
        check(&promoted, NOW + 400);
        assert_eq!(promoted.ca, *next);
        assert_eq!(promoted.next, None);
        assert_eq!(promoted.bundle, vec![pem_of_first(&next.cert_pem), pem_of_first(&renewed.ca.cert_pem)]);
        assert!(trusted(&added.bundle, &promoted), "the bundle published in phase 1 already trusts the new pair");
        assert!(trusted(&promoted.bundle, &renewed), "the bundle after phase 2 still trusts the old pair");

        // A second rollover keeps at most the signing, previous and next CAs; the oldest goes.
        let again = write(&Step::AddNextCa, Some(&promoted), NOW + 500);
        assert_eq!(again.bundle.len(), super::super::material::MAX_BUNDLE);
        let last = write(&Step::PromoteNextCa, Some(&again), NOW + 900);
        assert_eq!(last.bundle.len(), 2);
        assert!(!last.bundle.contains(&pem_of_first(&renewed.ca.cert_pem)));
        assert!(trusted(&again.bundle, &last) && trusted(&last.bundle, &promoted));
    }

    fn pem_of_first(pem: &str) -> String {
        pem_of(rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().as_ref())
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let short = Lifetimes { ca_validity: Duration::from_secs(10 * DAY), ..lifetimes() };
        let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let m = material_for(&Step::Create, None, now, &names(), &short).unwrap().unwrap();
        let f = check(&m, NOW);
        assert_eq!(f.leaf_not_after, f.ca_not_after);
    }
}
