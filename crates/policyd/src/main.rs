//! `policyd`: the daemon and the operator's CLI. See `policyd --help`.

use std::process::ExitCode;

use clap::Parser;
use policyd::cli::{self, exit, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
                // clap would exit 2, which means "daemon unreachable" here.
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if matches!(cli.command, Command::Daemon { .. }) {
        proto::runtime::init_tracing(proto::runtime::LogFormat::Text);
    }
    // One thread for the daemon too: every change is serialised by the
    // engine anyway, and one malloc arena keeps the resident set small
    // (per-thread arenas kept tens of MB of parse garbage mapped).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("policyd: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    ExitCode::from(runtime.block_on(cli::run(cli)))
}
