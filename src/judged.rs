//! What a policy made of an image ([`Checked`]), and the judgements remembered with the evidence they were made of
//! ([`Judged`]), so that a warm review of an image judges it by one lookup.
//!
//! A judgement is a pure function of the policy, the image as written, how it is used, the evidence and the
//! authorities' keys, unless the policy reads the review itself (CEL validations) or documents fetched beside the
//! evidence (`spec.evidence`): those are judged every time. An entry holds the policy it was made by and the cache
//! keys of the authorities it was made with (their names and keys or identities, as the verification caches key
//! them), and is found only by the same ones: a reloaded policy or a rotated key is a new judgement. It lives as
//! long as the evidence, at most [`MAX_ENTRIES`] of them.

use std::sync::{Arc, Mutex};

use crate::images::{ImageRef, Use};
use crate::policy::Policy;
use crate::reason::Reason;
use crate::verify::Authority;

/// What one policy made of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Every way the image fails the policy; empty when it passes.
    pub unmet: Vec<Reason>,
    /// What verified, and by which authority and key or identity, e.g.
    /// `signature by chains (key sha256:ab12…)`.
    pub verified: Vec<Arc<str>>,
}

/// Judgements kept per evidence: policies × references × uses of one image in the reviews of its lifetime.
pub const MAX_ENTRIES: usize = 8;

/// The judgements made of one image's evidence. A clone is empty: evidence is cloned only to be changed (coverage,
/// fetched documents), and what was judged of the original says nothing of the change.
#[derive(Default)]
pub struct Judged(Mutex<Vec<Entry>>);

struct Entry {
    policy: Arc<Policy>,
    image: ImageRef,
    usage: Use,
    /// [`Authority::cache_key`] of each authority, in the policy's order.
    authorities: Vec<Arc<str>>,
    checked: Arc<Checked>,
}

impl Entry {
    fn is(&self, policy: &Arc<Policy>, image: &ImageRef, usage: Use, authorities: &[&Arc<Authority>]) -> bool {
        Arc::ptr_eq(&self.policy, policy)
            && self.usage == usage
            && self.image == *image
            && self.authorities.len() == authorities.len()
            && self.authorities.iter().zip(authorities).all(|(a, b)| **a == *b.cache_key_str())
    }
}

impl Clone for Judged {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Judged({} entries)", self.lock().len())
    }
}

/// Whether what `policy` makes of an image depends only on the image, its evidence and the authorities.
pub fn rememberable(policy: &Policy) -> bool {
    policy.validations.is_empty() && policy.evidence.is_empty()
}

impl Judged {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What `policy` made of `image` used as `usage` with these `authorities` (resolved for the policy, in its
    /// order), judged by `check` the first time. The caller asks only for a [`rememberable`] policy.
    pub fn get_or_check(
        &self,
        policy: &Arc<Policy>,
        image: &ImageRef,
        usage: Use,
        authorities: &[&Arc<Authority>],
        check: impl FnOnce() -> Checked,
    ) -> Arc<Checked> {
        if let Some(found) = self.lock().iter().find(|e| e.is(policy, image, usage, authorities)) {
            return found.checked.clone();
        }
        let checked = Arc::new(check());
        let mut entries = self.lock();
        if entries.len() < MAX_ENTRIES && !entries.iter().any(|e| e.is(policy, image, usage, authorities)) {
            entries.push(Entry {
                policy: policy.clone(),
                image: image.clone(),
                usage,
                authorities: authorities.iter().map(|a| a.cache_key()).collect(),
                checked: checked.clone(),
            });
        }
        checked
    }

    /// How many judgements are remembered.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.lock().len()
    }
}
