//! Decision records (one JSON object per line, the `provgate audit` input) and where they are written.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::decide::{Decision, Outcome};
use crate::request::Request;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The record format's version: 1.
    #[serde(default = "version")]
    pub v: u32,
    pub time: String,
    pub uid: String,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub operation: String,
    pub user: String,
    pub dry_run: bool,
    pub decision: String,
    pub latency_ms: u64,
    /// Set when the request as a whole was denied before images were judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub images: Vec<ImageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub field: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: Option<String>,
    pub policies: Vec<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// What verified, by which authority and key or identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
}

/// The version of the record format this build writes.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The record of one decision. `time` is RFC 3339.
pub fn record(uid: &str, request: Option<&Request>, decision: &Decision, latency: Duration, time: String) -> Record {
    let images = decision
        .images
        .iter()
        .map(|i| ImageRecord {
            field: i.field.clone(),
            reference: i.image.as_ref().map_or_else(|| i.raw.clone(), ToString::to_string),
            digest: i.image.as_ref().and_then(|r| r.digest()).map(ToString::to_string),
            policies: i.policies.clone(),
            outcome: i.outcome.as_str().to_owned(),
            reason: i.failures.first().map(|f| f.reason.code().to_owned()),
            message: (i.outcome != Outcome::Allowed && i.outcome != Outcome::Unchanged).then(|| i.explain()),
            verified: i.verified.clone(),
        })
        .collect();
    Record {
        v: VERSION,
        time,
        uid: uid.to_owned(),
        namespace: request.map(|r| r.namespace().to_owned()).unwrap_or_default(),
        kind: request.map(|r| r.kind.kind.clone()).unwrap_or_default(),
        name: request.map(Request::object_name).unwrap_or_default(),
        operation: request.map(|r| label(&r.operation)).unwrap_or_default(),
        user: request.map(|r| r.user_info.username.clone()).unwrap_or_default(),
        dry_run: request.and_then(|r| r.dry_run).unwrap_or(false),
        decision: decision.verdict().as_str().to_owned(),
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        reason: decision.request_failure.as_ref().map(|r| r.code().to_owned()),
        message: decision.request_failure.as_ref().map(ToString::to_string),
        images,
    }
}

/// Appends records to a file, or writes them to standard output.
pub struct AuditLog {
    file: Option<tokio::sync::Mutex<tokio::fs::File>>,
}

impl AuditLog {
    pub async fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            None => None,
            Some(p) => {
                let f = tokio::fs::OpenOptions::new().create(true).append(true).open(p).await?;
                Some(tokio::sync::Mutex::new(f))
            }
        };
        Ok(Self { file })
    }

    /// Writes one record; a write failure is logged, never turned into an admission.
    pub async fn write(&self, record: &Record) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => return tracing::error!(error = %e, "audit record not serialisable"),
        };
        line.push(b'\n');
        let result = match &self.file {
            Some(file) => {
                let mut file = file.lock().await;
                match file.write_all(&line).await {
                    Ok(()) => file.flush().await,
                    Err(e) => Err(e),
                }
            }
            None => {
                let mut out = tokio::io::stdout();
                match out.write_all(&line).await {
                    Ok(()) => out.flush().await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, uid = %record.uid, "audit record not written");
        }
    }
}
