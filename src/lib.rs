//! provgate: a Kubernetes admission webhook that admits only images whose signed provenance it can verify.

pub mod admin;
pub mod admission;
pub mod app;
pub mod artifact;
pub mod audit;
pub mod audit_log;
pub mod certs;
pub mod check;
pub mod config;
pub mod credentials;
pub mod decide;
pub mod engine;
pub mod flights;
pub mod gather;
pub mod images;
pub mod keys;
pub mod managed_tls;
pub mod metrics;
pub mod oneshot;
pub mod plan;
pub mod policy;
pub mod reason;
pub mod registry;
pub mod request;
pub mod tls;
pub mod verify;
