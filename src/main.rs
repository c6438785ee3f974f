//! `bdr`: command-line front end of the observational block-device replicator.

mod attach;
mod bitmap_cmd;
mod blockdev;
mod cli;
mod config;
mod cut;
mod detach;
mod dm;
mod guard;
mod keygen;
mod kmod;
mod mountinfo;
mod primary;
mod primary_status;
mod priority;
mod private_file;
mod replica;
mod saved_bitmap;
mod size;
mod state;
mod status;
mod target;
mod tunnel;
mod tunnel_cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ConfigCommand, PrimaryCommand, ReplicaCommand, TunnelCommand};

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
        // netlink-packet-route warns about every attribute newer than itself.
        .unwrap_or_else(|| EnvFilter::new(format!("{default},netlink_packet_route=error")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose >= 2)
        .try_init();
}

fn run(cli: &mut Cli) -> anyhow::Result<()> {
    let explicit = cli.config.clone();
    let explicit = explicit.as_deref();
    config::apply(&mut cli.command, explicit)?;
    if let Some(t) = config::tunnel_of(&cli.command, explicit)? {
        tunnel_cmd::up(&t)?;
    }
    match &cli.command {
        Command::Attach(a) => attach::run(a),
        Command::Detach(d) => detach::run(&d.name, d.state_dir.as_deref()),
        Command::Status(s) => match s.name.as_deref().map(|n| config::load(n, explicit)) {
            Some(Ok(Some(c))) if c.role == config::Role::Replica => {
                let dir = s
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| state::state_dir_of(&c.name, None));
                replica::status::run(&dir, s.json)
            }
            _ => status::run(s.name.as_deref(), s.json, s.state_dir.as_deref()),
        },
        Command::Bitmap(b) => bitmap_cmd::run(b),
        Command::Guard { names } => guard::run(names),
        Command::CutTest(a) => cut::cut_test(a),
        Command::Primary(PrimaryCommand::Run(a)) => primary::commands::primary_run(a),
        Command::Sync(a) => primary::commands::sync_once(a),
        Command::Verify(a) => primary::commands::verify(a),
        Command::Replica(ReplicaCommand::Serve(a)) => replica::serve::run(a),
        Command::Replica(ReplicaCommand::Status(a)) => {
            let dir = config::required(a.state_dir.as_ref(), "--state-dir (or NAME)", "NAME")?;
            replica::status::run(dir, a.json)
        }
        Command::Replica(ReplicaCommand::Promote(a)) => {
            let name = a.name.as_deref().unwrap_or("NAME");
            let device = config::required(a.device.as_ref(), "--device", name)?;
            let dir = config::required(a.state_dir.as_ref(), "--state-dir", name)?;
            replica::promote::run(device, dir)
        }
        Command::Keygen(k) => {
            let public = keygen::keygen(&k.out, k.force)?;
            eprintln!("private key written to {} (mode 0600)", k.out.display());
            println!("{public}");
            Ok(())
        }
        Command::Tunnel(TunnelCommand::Up { name }) => tunnel_cmd::run_up(name, explicit),
        Command::Tunnel(TunnelCommand::Down { name }) => tunnel_cmd::run_down(name, explicit),
        Command::Tunnel(TunnelCommand::Status { name, json }) => {
            tunnel_cmd::run_status(name, explicit, *json)
        }
        Command::Config(ConfigCommand::Check { name }) => config::run_check(name, explicit),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Daemons log their steps (info) by default.
    let daemon = matches!(
        cli.command,
        Command::Primary(_) | Command::Replica(ReplicaCommand::Serve(_))
    );
    init_tracing(cli.verbose.max(u8::from(daemon)));
    match run(&mut cli) {
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
