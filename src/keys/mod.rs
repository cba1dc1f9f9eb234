//! Key sources named by policies: `k8s://NS/SECRET[/KEY]`, file paths and inline PEM, parsed once and fingerprinted.
