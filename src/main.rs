//! `bdr`: command-line front end of the observational block-device replicator.

mod attach;
mod bitmap_cmd;
mod blockdev;
mod cli;
mod cut;
mod detach;
mod dm;
mod guard;
mod keygen;
mod kmod;
mod mountinfo;
mod primary;
mod primary_status;
mod private_file;
mod replica;
mod saved_bitmap;
mod size;
mod state;
mod status;
mod target;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, PrimaryCommand, ReplicaCommand};

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose >= 2)
        .try_init();
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Attach(a) => attach::run(a),
        Command::Detach(d) => detach::run(&d.name, d.state_dir.as_deref()),
        Command::Status(s) => status::run(s.name.as_deref(), s.json, s.state_dir.as_deref()),
        Command::Bitmap(b) => bitmap_cmd::run(b),
        Command::Guard { names } => guard::run(names),
        Command::CutTest(a) => cut::cut_test(a),
        Command::Primary(PrimaryCommand::Run(a)) => primary::commands::primary_run(a),
        Command::Sync(a) => primary::commands::sync_once(a),
        Command::Verify(a) => primary::commands::verify(a),
        Command::Replica(ReplicaCommand::Serve(a)) => replica::serve::run(a),
        Command::Replica(ReplicaCommand::Status { state_dir, json }) => {
            replica::status::run(state_dir, *json)
        }
        Command::Replica(ReplicaCommand::Promote { device, state_dir }) => {
            replica::promote::run(device, state_dir)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Daemons log their steps (info) by default.
    let daemon = matches!(
        cli.command,
        Command::Primary(_) | Command::Replica(ReplicaCommand::Serve(_))
    );
    init_tracing(cli.verbose.max(u8::from(daemon)));
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bdr: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
