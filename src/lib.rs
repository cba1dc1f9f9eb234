//! provgate: admits only images whose signed provenance it can verify.

pub mod artifact;
pub mod decide;
pub mod images;
pub mod policy;
pub mod reason;
