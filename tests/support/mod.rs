//! Test harness shared by the integration tests: real servers on loopback, never mocks of them.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod kube;
pub mod kube_api;
pub mod registry;
pub mod signing;
pub mod verify;
pub mod webhook;
