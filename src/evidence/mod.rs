//! Evidence by digest (SBOMs, test results, scan reports that attestations reference as in-toto
//! resourceDescriptors instead of inlining): a policy's `spec.evidence` declares it, `from` selects descriptors in
//! the verified statements, the documents are fetched from a content-addressable store by the signed sha256,
//! checked, parsed and normalised, and validations read them as `evidence.<name>`.
//!
//! Pure parts (`spec`, `select`, `normalise`, `document`) are apart from I/O (`store` for HTTPS stores, `fetch`
//! for the gatherer's hook, which also reads OCI stores through the registry client).

pub mod document;
pub mod fetch;
pub mod normalise;
pub mod select;
pub mod spec;
pub mod store;
