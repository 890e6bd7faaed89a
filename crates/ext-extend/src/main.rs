//! `ext-extend`: the command-line front of the ext-extend crates. It parses flags, sets up
//! logging, calls the libraries and maps their errors to exit codes (2: bad input, 1: other).

mod build;
mod cache;
mod cli;
mod cnb;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { ext_oci::tls::expose_bundled_roots() };
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(phase) = args.first().and_then(|a| cnb::phase_from_program_name(a)) {
        args.insert(1, phase.to_string());
        args.insert(2, "--lifecycle-drop-in".to_string());
    }
    let is_phase = args.get(1).is_some_and(|a| matches!(a.as_str(), "generate" | "extend" | "export"));
    if is_phase {
        args = cnb::lifecycle_style_args(args);
        if args.iter().any(|a| a == "--version") {
            // The lifecycle's phases answer `-version` with the bare version.
            println!("{}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
    }
    let cli = cli::Cli::parse_from(args);
    init_logging(cli.log_level.as_deref(), cli.quiet);
    install_signal_cleanup();
    let result = match cli.command {
        cli::Command::Build(args) => build::run(args, cli.quiet),
        cli::Command::Generate(args) => cnb::generate(args),
        cli::Command::Extend(args) => cnb::extend(args, cli.log_level.as_deref(), cli.quiet),
        cli::Command::Export(args) => cnb::export(args),
        cli::Command::Cache { command } => cache::run(command),
    };
    if ext_oci::cleanup::interrupted().is_some() {
        // The signal thread is cleaning up and will exit with 128+signal; what failed here
        // failed because of it.
        loop {
            std::thread::park();
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Errors quote untrusted text (layer entry names, context file names, Dockerfile
            // lines): no control character of it may reach the terminal.
            eprintln!("error: {}", ext_oci::escape::for_terminal(&error_line(&failure.error)));
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes on one line, each cause once: many messages already include their
/// source (`... : No such file or directory`), and anyhow's `{:#}` would repeat it.
fn error_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// On Ctrl-C or SIGTERM: stop sandbox processes, remove scratch and staging directories (the
/// output keeps its previous state), and exit 130/143.
fn install_signal_cleanup() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("ext-extend: interrupted, cleaning up");
            ext_oci::cleanup::run_now(sig);
            std::process::exit(128 + sig);
        }
    });
}

fn init_logging(level: Option<&str>, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXT_EXTEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or(default)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

/// An error with the exit code it deserves.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: u8,
}

impl Failure {
    /// Bad input: usage, Dockerfile, context, references.
    pub fn input(error: impl Into<anyhow::Error>) -> Failure {
        Failure { error: error.into(), code: 2 }
    }

    /// Anything else (I/O, a damaged store, a failed registry).
    pub fn other(error: impl Into<anyhow::Error>) -> Failure {
        Failure { error: error.into(), code: 1 }
    }
}

impl From<ext_executor::ExecError> for Failure {
    fn from(e: ext_executor::ExecError) -> Self {
        if e.is_user_error() { Failure::input(e) } else { Failure::other(e) }
    }
}

impl From<ext_oci::OciError> for Failure {
    fn from(e: ext_oci::OciError) -> Self {
        if e.is_user_error() { Failure::input(e) } else { Failure::other(e) }
    }
}
