//! Policy files: load, validate, compile CEL once, match images, evaluate.

pub mod provenance;
