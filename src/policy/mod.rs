//! Policy files: load, validate, compile CEL once, match images, evaluate.

pub mod cel;
pub mod eval;
pub mod provenance;
