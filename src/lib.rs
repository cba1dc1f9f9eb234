//! provgate: admits only images whose signed provenance it can verify.

pub mod images;
pub mod artifact;
