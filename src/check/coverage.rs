//! Checks what may satisfy an attestation requirement besides statements about the image's own digest: a release
//! list (`via`) whose own signature and attestation verified and which pins the image, or (`coverLayers`, image
//! volumes only) a statement naming every layer of the mounted artifact.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{absent, checks_of, not_gathered};
use crate::gather::{ImageEvidence, ListEvidence};
use crate::images::{Digest, ImageRef, Use};
use crate::policy::Policy;
use crate::policy::require::{AttestationNeed, check_attestation, check_signature};
use crate::policy::via::Via;
use crate::reason::{Reason, Requirement};
use crate::verify::{AttestationCheck, Authority, SignatureCheck, Statement, Verified};

/// The statements a need may be satisfied by instead of the image's own: computed for every need before any is
/// checked, so that CEL can borrow them.
pub(super) struct Alternatives {
    by_need: BTreeMap<String, Alternative>,
    usage: Use,
}

enum Alternative {
    /// Read via a release list: the list's statements about itself, once the list covers the image; or why not.
    List(Result<AttestationCheck, Reason>),
    /// An image volume under `coverLayers`: the statements naming every layer, and why the others fall short; or
    /// why the layers could not be read.
    Layers(Result<(AttestationCheck, String), Reason>),
}

/// A need satisfied: the statements that count, where they come from, and the digest they are about.
pub(super) type Met<'s> = (Vec<&'s Verified<Statement>>, Source<'s>, &'s Digest);

/// How a need was satisfied, for explanations.
pub(super) enum Source<'a> {
    Image,
    List(&'a Via),
    Layers,
}

impl Alternatives {
    /// What `policy`'s needs may use for `image` (already pinned to the verified digest), written as `usage`.
    pub(super) fn of(
        policy: &Policy,
        image: &ImageRef,
        usage: Use,
        evidence: &ImageEvidence,
        resolved: &[Arc<Authority>],
    ) -> Self {
        let mut by_need = BTreeMap::new();
        for need in &policy.requirements.attestations {
            let alternative = match &need.via {
                Some(via) => Alternative::List(via_list(need, via, policy, image, evidence, resolved)),
                None if need.cover_layers && usage == Use::Mount => {
                    Alternative::Layers(every_layer(policy, evidence, resolved))
                }
                None => continue,
            };
            by_need.insert(need.name.clone(), alternative);
        }
        Self { by_need, usage }
    }

    /// The statements `need` is checked over, and where they come from: the list's for a need read via a list,
    /// else the image's own (`statements`). `Err` when a list does not cover the image.
    pub(super) fn statements_for<'s>(
        &'s self,
        need: &'s AttestationNeed,
        statements: &'s AttestationCheck,
    ) -> Result<(&'s AttestationCheck, Source<'s>), Reason> {
        match (self.by_need.get(&need.name), &need.via) {
            (Some(Alternative::List(Ok(list))), Some(via)) => Ok((list, Source::List(via))),
            (Some(Alternative::List(Err(reason))), _) => Err(reason.clone()),
            _ => Ok((statements, Source::Image)),
        }
    }

    /// After `need` failed over the image's own statements (`unmet`): the statements naming every layer of an image
    /// volume, if they satisfy it; otherwise the reason to report (layers-uncovered, or the original one with a
    /// note when `coverLayers` could not apply).
    pub(super) fn layers_instead<'s>(
        &'s self,
        need: &AttestationNeed,
        unmet: crate::policy::require::Unmet,
        names: &[Arc<Authority>],
    ) -> Result<Met<'s>, Reason> {
        let layers = match self.by_need.get(&need.name) {
            Some(Alternative::Layers(layers)) => layers,
            _ if need.cover_layers && self.usage == Use::Run => {
                return Err(Reason::Unmet {
                    requirement: unmet.requirement,
                    message: format!(
                        "{}; coverLayers covers image volumes only: a container runs its config too, which is no layer",
                        unmet.message
                    ),
                });
            }
            _ => return Err(Reason::from(unmet)),
        };
        let (covering, shortfall) = match layers {
            Ok(found) => found,
            Err(reason) => return Err(reason.clone()),
        };
        match check_attestation(need, covering, names) {
            Ok(found) => Ok((found, Source::Layers, &covering.digest)),
            Err(by_layers) => {
                let why = if covering.verified.is_empty() { shortfall.clone() } else { by_layers.message };
                Err(Reason::Unmet {
                    requirement: Requirement::LayersUncovered,
                    message: format!("{}; nor by the layers of this image volume: {why}", unmet.message),
                })
            }
        }
    }
}

/// `via`: the release list must have been gathered, carry a valid signature and the attestation from the need's
/// authorities (statements about the list's own digest only), be of the type asked, and pin `image`.
fn via_list(
    need: &AttestationNeed,
    via: &Via,
    policy: &Policy,
    image: &ImageRef,
    evidence: &ImageEvidence,
    resolved: &[Arc<Authority>],
) -> Result<AttestationCheck, Reason> {
    let found: &ListEvidence = match evidence.coverage.lists.get(&via.list) {
        Some(Ok(found)) => found,
        Some(Err(reason)) => return Err(reason.clone()),
        None => {
            return Err(Reason::Unmet {
                requirement: Requirement::NoEvidence,
                message: format!("{} was not gathered for this image", via.describe()),
            });
        }
    };
    let list = &found.evidence;
    let named = format!("release list {}", via.list.with_digest(list.digest.clone()));
    let prefixed = |u: crate::policy::require::Unmet| Reason::Unmet {
        requirement: u.requirement,
        message: format!("{named}: {}", u.message),
    };
    let Some(checks) = checks_of(&list.verified, policy, resolved) else { return Err(not_gathered(&list.digest)) };
    let signatures = SignatureCheck::merge(&list.digest, checks.iter().map(|c| &c.signatures));
    // A list not signed yet says where provgate looked and when it looks again, as an image does.
    if let Some(unmet) = check_signature(&need.need, &signatures, resolved) {
        return Err(absent(prefixed(unmet), policy, list));
    }
    let statements =
        AttestationCheck::merge(&list.digest, checks.iter().map(|c| &c.attestations)).about_only(&list.digest);
    check_attestation(need, &statements, resolved).map_err(|u| absent(prefixed(u), policy, list))?;
    let pins = match &found.content {
        Some(Ok(pins)) => pins,
        Some(Err(reason)) => return Err(reason.clone()),
        None => return Err(not_gathered(&list.digest)),
    };
    pins.check_type(via.artifact_type.as_deref())
        .map_err(|e| Reason::Unmet { requirement: Requirement::ListInvalid, message: format!("{named}: {e}") })?;
    let Some(digest) = image.digest() else { return Err(not_gathered(&list.digest)) };
    if !pins.pins(image, digest) {
        let elsewhere = match pins.pins_elsewhere(image, digest) {
            Some(name) => format!(" (it pins that digest for {name} only)"),
            None => String::new(),
        };
        return Err(Reason::Unmet {
            requirement: Requirement::NotOnList,
            message: format!(
                "{named} ({}) does not pin {}@{digest}{elsewhere}: only images on a verified release list are covered \
                 by it",
                pins.describe(),
                image.name()
            ),
        });
    }
    Ok(statements)
}

/// `coverLayers` for an image volume: the statements the policy's authorities verified that name every layer of its
/// manifest, with why the others fall short.
fn every_layer(
    policy: &Policy,
    evidence: &ImageEvidence,
    resolved: &[Arc<Authority>],
) -> Result<(AttestationCheck, String), Reason> {
    let found = match &evidence.coverage.layers {
        Some(Ok(found)) => found,
        Some(Err(reason)) => return Err(reason.clone()),
        None => return Err(not_gathered(&evidence.digest)),
    };
    let layers = found.layers.as_ref().map_err(|e| Reason::Unmet {
        requirement: Requirement::LayersUncovered,
        message: format!("the layers of this image volume cannot be covered: {e}"),
    })?;
    let at = policy.signatures.as_deref();
    let checks: Option<Vec<&AttestationCheck>> =
        resolved.iter().map(|a| found.verified.get(&crate::gather::evidence_key(at, a)).map(Arc::as_ref)).collect();
    let Some(checks) = checks else { return Err(not_gathered(&evidence.digest)) };
    let about_layers = AttestationCheck::merge(&evidence.digest, checks);
    let shortfall = crate::coverage::layers::shortfall(&about_layers.verified, layers);
    let covering: Vec<_> =
        crate::coverage::layers::covering(&about_layers.verified, layers).into_iter().cloned().collect();
    Ok((AttestationCheck { digest: evidence.digest.clone(), verified: covering, rejected: Vec::new() }, shortfall))
}
