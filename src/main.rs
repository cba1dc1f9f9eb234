//! provgate's command line: wiring only (parse arguments, set up logging, run a command).

use std::process::ExitCode;

use clap::Parser as _;

use provgate::config::Config;

mod args;
mod logging;
use args::{AuditArgs, AuditCommand, CertsCommand, Cli, Command, Output, PolicyCommand, ServeArgs, VerifyArgs};

/// mimalloc: a review allocates many small, short-lived values (the parsed request, the decision, its record), which
/// mimalloc serves in fewer instructions than glibc's allocator. Built without transparent huge pages (`no_thp`):
/// with them, each newly touched 2 MiB region is zeroed at once, a cost that lands on reviews as the caches grow.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Verify(args) => return verify(args),
        Command::Policy(PolicyCommand::Check { path }) => return report(provgate::policy::cli::check(&path)),
        Command::Policy(PolicyCommand::Test(args)) => {
            let options = provgate::policy::cli::TestOptions {
                statement: args.statement,
                image: args.image,
                object: args.object,
                namespace: args.namespace,
                attestation: args.attestation,
                evidence: args.evidence,
                json: matches!(args.output, Output::Json),
                ..Default::default()
            };
            return report(provgate::policy::cli::test(&args.path, &options));
        }
        Command::Audit(args) => return ExitCode::from(provgate::audit_log::run_stdio(&audit_options(args))),
        Command::Certs(CertsCommand::Generate { service, namespace, out }) => {
            certs_generate(&service, &namespace, &out)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(file) => Config::from_file(file)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.admin_listen {
        config.admin_listen = v;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        (config.tls.cert_file, config.tls.key_file) = (Some(cert), Some(key));
    }
    if let Some(v) = args.policies {
        config.policies = v;
    }
    if let Some(v) = args.audit_log {
        config.audit.log = Some(v);
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let running = provgate::app::start(config).await?;
        // SIGTERM is how Kubernetes stops a Pod; SIGINT is Ctrl-C. Either drains reviews and flushes the audit log.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let signal = tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| "SIGINT")?,
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal, "shutting down");
        running.shutdown().await;
        Ok(())
    })
}

fn verify(args: VerifyArgs) -> ExitCode {
    match verify_report(&args) {
        Ok(report) => {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
                Output::Text => print!("{}", report.text()),
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("provgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn verify_report(args: &VerifyArgs) -> anyhow::Result<provgate::oneshot::Report> {
    let config = match &args.config {
        Some(file) => Config::from_file(file)?,
        None => Config::default(),
    };
    let set = match (&args.key, &args.policy) {
        (Some(key), _) => provgate::oneshot::key_policy(key)?,
        (None, policy) => provgate::policy::load(policy.as_ref().unwrap_or(&config.policies))?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let engine =
            provgate::app::oneshot_engine(&config, std::sync::Arc::new(provgate::policy::PolicyStore::with(set)))
                .await?;
        let gatherer = engine.gatherer.clone();
        Ok(provgate::oneshot::verify(&engine, &gatherer, &args.images, &args.volumes, &args.namespace).await)
    })
}

fn audit_options(args: AuditArgs) -> provgate::audit_log::Options {
    provgate::audit_log::Options {
        logs: args.log.into_iter().chain(args.logs).collect(),
        query: provgate::audit_log::Query {
            since: args.since,
            until: args.until,
            namespace: args.namespace,
            decision: args.decision,
            denied: args.denied,
            policy: args.policy,
            image: args.image,
            reason: args.reason,
            user: args.user,
        },
        json: matches!(args.output, Output::Json),
        show: args.command.map(|AuditCommand::Show { uid }| uid),
    }
}

fn report(report: provgate::policy::cli::CommandOutput) -> ExitCode {
    print!("{}", report.text);
    ExitCode::from(report.exit_code)
}

fn certs_generate(service: &str, namespace: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let names = provgate::certs::service_names(service, namespace);
    let generated = provgate::certs::generate(&names, &[])?;
    provgate::certs::write(out, &generated)?;
    let (ca, cert, key) = provgate::certs::paths(out);
    eprintln!("wrote {}, {}, {} for {}", ca.display(), cert.display(), key.display(), names.join(", "));
    println!("{}", generated.ca_bundle());
    Ok(())
}
