//! The work of one review, decided before any I/O: which policies govern each image field (matching by glob and
//! namespace), and which fields keep the credit of an UPDATE.

use std::collections::HashSet;
use std::sync::Arc;

use crate::images::{ImageField, ImageRef, RefError};
use crate::policy::{Policy, PolicySet};

/// What must be done for one image field.
#[derive(Debug, Clone)]
pub enum Step {
    /// On UPDATE, the same field of the old object held the same digest reference, so it was judged when that was
    /// admitted. A tag gets no such credit: it may name another image now, and the old object may have been
    /// admitted with a warn- or audit-mode failure.
    Unchanged,
    /// The reference does not parse.
    Invalid(RefError),
    /// No policy governs the image; `noMatch` decides.
    Unmatched(ImageRef),
    /// These policies govern the image and must all pass.
    Judge { image: ImageRef, policies: Vec<Arc<Policy>> },
}

#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub field: ImageField,
    pub step: Step,
}

/// The work for one request, decided before any I/O.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub images: Vec<PlannedImage>,
}

impl Plan {
    /// Whether any governing policy needs registry evidence.
    pub fn needs_evidence(&self) -> bool {
        self.images
            .iter()
            .any(|i| matches!(&i.step, Step::Judge { policies, .. } if policies.iter().any(|p| p.needs_evidence())))
    }

    /// Whether judging runs any CEL validation (some governing policy has `validations`); without one, judging is
    /// set logic over what verified.
    pub fn runs_validations(&self) -> bool {
        self.images.iter().any(
            |i| matches!(&i.step, Step::Judge { policies, .. } if policies.iter().any(|p| !p.validations.is_empty())),
        )
    }
}

/// Matches every field against the policy set. `previous` holds the image fields of the old object on UPDATE: a
/// field keeps its credit only when the same path held the same digest reference.
pub fn plan(fields: Vec<ImageField>, previous: &[ImageField], policies: &PolicySet, namespace: &str) -> Plan {
    let before: HashSet<(&str, &str)> = previous
        .iter()
        .filter(|f| f.image.as_ref().is_ok_and(|i| i.digest().is_some()))
        .map(|f| (&*f.path, &*f.raw))
        .collect();
    let images = fields
        .into_iter()
        .map(|field| {
            let step = if before.contains(&(&*field.path, &*field.raw)) {
                Step::Unchanged
            } else {
                match &field.image {
                    Err(e) => Step::Invalid(e.clone()),
                    Ok(image) => {
                        let matching = policies.matching(image, namespace);
                        if matching.is_empty() {
                            Step::Unmatched(image.clone())
                        } else {
                            Step::Judge { image: image.clone(), policies: matching }
                        }
                    }
                }
            };
            PlannedImage { field, step }
        })
        .collect();
    Plan { images }
}

impl Plan {
    /// Each distinct image some governing policy needs registry evidence for, with those policies (an image written
    /// in several fields is gathered once).
    pub fn to_gather(&self) -> Vec<(&ImageRef, Vec<&Arc<Policy>>)> {
        let mut out: Vec<(&ImageRef, Vec<&Arc<Policy>>)> = Vec::new();
        for planned in &self.images {
            let Step::Judge { image, policies } = &planned.step else { continue };
            let needing = policies.iter().filter(|p| p.needs_evidence());
            match out.iter_mut().find(|(i, _)| *i == image) {
                Some((_, known)) => {
                    for p in needing {
                        if !known.iter().any(|k| Arc::ptr_eq(k, p)) {
                            known.push(p);
                        }
                    }
                }
                None => {
                    let needing: Vec<&Arc<Policy>> = needing.collect();
                    if !needing.is_empty() {
                        out.push((image, needing));
                    }
                }
            }
        }
        out
    }
}
