//! Command line.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::size::{parse_region_size, RegionSize};
use crate::target::{parse_bitmap_id, parse_dm_name};

/// Observational block-device replicator.
#[derive(Debug, Parser)]
#[command(name = "bdr", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create /dev/mapper/NAME over the whole of LOWER, tracking written regions.
    Attach(AttachArgs),
    /// Remove the bdr device NAME (LOWER is left as it is).
    Detach(DetachArgs),
    /// Show dirty-region counters of one or all bdr devices.
    Status(StatusArgs),
    /// Low-level access to a device's dirty bitmap (debugging, tests, recovery).
    #[command(subcommand)]
    Bitmap(BitmapCommand),
}

#[derive(Debug, Subcommand)]
pub enum BitmapCommand {
    /// Move the active bits into the frozen bitmap; prints the frozen region count.
    Freeze { name: String },
    /// Drop the frozen bitmap (its regions are replicated).
    Ack { name: String },
    /// OR the frozen bitmap back into the active one.
    Merge { name: String },
    /// Print region indices, one per line.
    Dump {
        name: String,
        /// The frozen bitmap (default).
        #[arg(long, conflicts_with = "active")]
        frozen: bool,
        /// The active bitmap, without clearing it.
        #[arg(long)]
        active: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Name of the new device: /dev/mapper/NAME.
    #[arg(value_parser = parse_dm_name)]
    pub name: String,

    /// The block device to track, e.g. /dev/vdb (used whole).
    pub lower: PathBuf,

    /// Granularity of the dirty bitmap: a power of two, at least 4KiB (65536, 64K, 64KiB, 1M).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_region_size)]
    pub region_size: RegionSize,

    /// Bitmap id (1-63 of A-Z a-z 0-9 _ . : -); default: 32 random hex digits.
    #[arg(long, value_name = "ID", value_parser = parse_bitmap_id)]
    pub id: Option<String>,

    /// dm-bdr.ko to insert if `modprobe dm-bdr` fails.
    #[arg(long, value_name = "PATH", env = "BDR_KMOD")]
    pub kmod: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The bdr device to remove.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One device; all bdr devices if omitted.
    pub name: Option<String>,

    /// Machine-readable output: an object for NAME, an array otherwise.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bdr").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_defaults() {
        let cli = parse(&["attach", "bdr0", "/dev/vdb"]).unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(a.name, "bdr0");
        assert_eq!(a.lower, PathBuf::from("/dev/vdb"));
        assert_eq!(a.region_size.sectors(), 128);
        assert_eq!(a.id, None);
        assert_eq!(cli.verbose, 0);
    }

    #[test]
    fn attach_options() {
        let cli = parse(&[
            "-vv",
            "attach",
            "--region-size",
            "1MiB",
            "--id",
            "site-a.disk:1",
            "bdr0",
            "/dev/vdb",
            "--kmod",
            "/tmp/dm-bdr.ko",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        let Command::Attach(a) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(a.region_size.bytes(), 1 << 20);
        assert_eq!(a.id.as_deref(), Some("site-a.disk:1"));
        assert_eq!(a.kmod, Some(PathBuf::from("/tmp/dm-bdr.ko")));
    }

    #[test]
    fn attach_rejects_bad_values() {
        for args in [
            &["attach", "bdr0", "/dev/vdb", "--region-size", "48K"][..],
            &["attach", "bdr0", "/dev/vdb", "--region-size", "2K"],
            &["attach", "bdr0", "/dev/vdb", "--region-size", "lots"],
            &["attach", "bdr0", "/dev/vdb", "--id", "has space"],
            &["attach", "bdr0", "/dev/vdb", "--id", ""],
            &["attach", "a/b", "/dev/vdb"],
            &["attach", "bdr0"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn status_and_detach() {
        let cli = parse(&["status", "--json"]).unwrap();
        let Command::Status(s) = cli.command else {
            panic!("not status")
        };
        assert!(s.json);
        assert_eq!(s.name, None);
        let cli = parse(&["status", "bdr0", "-v"]).unwrap();
        assert_eq!(cli.verbose, 1);
        let cli = parse(&["detach", "bdr0"]).unwrap();
        assert!(matches!(cli.command, Command::Detach(d) if d.name == "bdr0"));
        assert!(parse(&["detach"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
