//! provgate's command-line arguments, as clap types: one struct or enum per command, each flag with its
//! environment variable where it has one. `main.rs` only wires them to the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "provgate", version, about = "Admits only container images whose signed provenance it can verify")]
pub(crate) struct Cli {
    /// Log lines on standard error as json or text (default: json unless standard error is a terminal).
    #[arg(long, value_enum, global = true, env = "PROVGATE_LOG_FORMAT")]
    pub(crate) log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the admission webhook (HTTPS /validate; admin /healthz, /readyz, /metrics).
    Serve(ServeArgs),
    /// Judge images once, as admission would, and show what the registry holds for them.
    Verify(VerifyArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create webhook serving certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Read decision logs back: denials grouped by namespace, image, policy and reason, or one decision in full.
    Audit(AuditArgs),
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (every field has a default).
    #[arg(long, env = "PROVGATE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[arg(long, env = "PROVGATE_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    #[arg(long, env = "PROVGATE_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    #[arg(long, env = "PROVGATE_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    #[arg(long, env = "PROVGATE_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    #[arg(long, env = "PROVGATE_POLICIES")]
    pub(crate) policies: Option<PathBuf>,
    #[arg(long, env = "PROVGATE_AUDIT_LOG")]
    pub(crate) audit_log: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// Image references (tags are resolved to digests), judged as the containers of a Pod.
    #[arg(required_unless_present = "volumes")]
    pub(crate) images: Vec<String>,
    /// An image (or OCI artifact) judged as mounted by an image volume (`volumes[].image.reference`); repeatable.
    #[arg(long = "volume", value_name = "IMAGE")]
    pub(crate) volumes: Vec<String>,
    /// Policy file or directory (default: the config's policies).
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// Require a signature by this key (k8s://NS/SECRET[/KEY], a PEM file, or inline PEM) instead of policies.
    #[arg(long, conflicts_with = "policy")]
    pub(crate) key: Option<String>,
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
    /// Configuration file (registries, caches, deadline, noMatch).
    #[arg(long, env = "PROVGATE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Load and compile every policy under PATH; errors as file:line.
    Check { path: PathBuf },
    /// Evaluate policies over a local in-toto statement or DSSE envelope, without a registry.
    Test(PolicyTestArgs),
}

#[derive(Args)]
pub(crate) struct PolicyTestArgs {
    /// A policy file or directory.
    pub(crate) path: PathBuf,
    /// An in-toto statement, or a DSSE envelope holding one (its signature is not checked).
    #[arg(long)]
    pub(crate) statement: PathBuf,
    /// The image as REF@DIGEST (default: the statement's first subject).
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// The admitted object (JSON or YAML).
    #[arg(long)]
    pub(crate) object: Option<PathBuf>,
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// The attestation name the statement is filed under (default provenance).
    #[arg(long)]
    pub(crate) attestation: Option<String>,
    /// A local evidence document as NAME=FILE (repeatable): read as the policy's `evidence` entry NAME would read
    /// it from its store, once the statement's descriptors (its `from`) name the file's sha256.
    #[arg(long = "evidence", value_name = "NAME=FILE", value_parser = evidence_file)]
    pub(crate) evidence: Vec<(String, PathBuf)>,
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
}

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// A CA and a serving certificate for the webhook Service; prints the caBundle.
    Generate {
        #[arg(long, default_value = "provgate")]
        service: String,
        #[arg(long, default_value = "provgate-system")]
        namespace: String,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

#[derive(Args)]
#[command(subcommand_precedence_over_arg = true)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub(crate) command: Option<AuditCommand>,
    /// Decision logs to read: files (gzip-compressed rotations included) or - for standard input.
    #[arg(value_name = "LOG")]
    pub(crate) logs: Vec<String>,
    /// A decision log to read (repeatable; - is standard input).
    #[arg(long = "log", value_name = "LOG", global = true)]
    pub(crate) log: Vec<String>,
    /// Only decisions at or after this time: a duration ago (1h, 30m) or an RFC 3339 time.
    #[arg(long, global = true)]
    pub(crate) since: Option<String>,
    /// Only decisions at or before this time: a duration ago or an RFC 3339 time.
    #[arg(long, global = true)]
    pub(crate) until: Option<String>,
    /// Only requests in this namespace.
    #[arg(long, global = true)]
    pub(crate) namespace: Option<String>,
    /// Only this decision; the summary then groups its failures (deny: denials, warn: warnings, allow: failures
    /// under audit-mode policies).
    #[arg(long, global = true, value_parser = ["allow", "warn", "deny"])]
    pub(crate) decision: Option<String>,
    /// Only denials (--decision deny).
    #[arg(long, global = true, conflicts_with = "decision")]
    pub(crate) denied: bool,
    /// Only images governed by this policy.
    #[arg(long, global = true)]
    pub(crate) policy: Option<String>,
    /// Only images whose reference matches this glob (* within a path segment, ** across segments).
    #[arg(long, global = true)]
    pub(crate) image: Option<String>,
    /// Only this reason code (of an image, or of a request denied as a whole).
    #[arg(long, global = true)]
    pub(crate) reason: Option<String>,
    /// Only requests by this user.
    #[arg(long, global = true)]
    pub(crate) user: Option<String>,
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub(crate) output: Output,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// One decision in full: the request, every image, what verified or failed (JSON: the records with this uid).
    Show {
        /// The AdmissionReview uid.
        uid: String,
    },
}

/// `NAME=FILE` of `policy test --evidence`.
fn evidence_file(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_owned(), PathBuf::from(file))),
        _ => Err(format!("{s:?} is not NAME=FILE")),
    }
}
