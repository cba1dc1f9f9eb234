//! provgate: admits only images whose signed provenance it can verify.

pub mod artifact;
pub mod images;
pub mod policy;
