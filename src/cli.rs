//! Command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use crate::size::{parse_region_size, parse_size, RegionSize};
use crate::target::{parse_bitmap_id, parse_dm_name};

/// Observational block-device replicator.
#[derive(Debug, Parser)]
#[command(name = "bdr", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The volume's config file (default /etc/bdr/NAME.toml, or $BDR_CONFIG_DIR/NAME.toml);
    /// options on the command line override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

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
    /// Internal: take one cut and report it (VM lab).
    #[command(name = "__cut", hide = true)]
    CutTest(CutTestArgs),
    /// Internal: the suspend guard of a primary daemon (see src/guard.rs).
    #[command(name = "__guard", hide = true)]
    Guard {
        /// Devices to resume if the daemon dies while they are suspended.
        names: Vec<String>,
    },
    /// The primary's replication daemon.
    #[command(subcommand)]
    Primary(PrimaryCommand),
    /// One cut now (`bdr sync --once NAME --peer ADDR`): exits 0 once the replica committed it.
    Sync(SyncArgs),
    /// Compare a fresh cut of NAME with the replica by chunk hashes; exit 1 if they differ.
    Verify(VerifyArgs),
    /// The replica side: serve, status, promote.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Make a WireGuard key pair: the private key goes to a 0600 file, the public key is printed.
    Keygen(KeygenArgs),
    /// The volume's WireGuard tunnel, as its config file describes it.
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Volume config files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (created 0600; its directory 0700 if missing).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing key file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Create or update the interface: key, listen port, the one peer, address, link up.
    Up { name: String },
    /// Delete the interface (no error if it is gone).
    Down { name: String },
    /// Show the interface: peer, endpoint, last handshake, bytes.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate NAME's config file: syntax, values, and the machine (devices, keys, modes).
    Check { name: String },
}

/// A duration: a number and a unit (ms, s, m, h); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit '{u}': use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("duration '{s}' must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Where cuts of NAME come from, and where its state is kept.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Copy-on-write store for cuts: a directory (a sparse file of --cow-size there) or a
    /// block device used whole. Required for a bdr device.
    #[arg(long, value_name = "DIR|DEV")]
    pub cow: Option<PathBuf>,

    /// Size of the COW file when --cow is a directory (default 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub cow_size: Option<u64>,

    /// State dir of the volume (default /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Test stand-in: a plain file as the device...
    #[arg(long, hide = true, value_name = "FILE", requires = "stand_in_map")]
    pub stand_in_device: Option<PathBuf>,

    /// ...and a stand-in bitmap file (bdr_bitmap::FileDirtyMap) tracking it.
    #[arg(long, hide = true, value_name = "FILE", requires = "stand_in_device")]
    pub stand_in_map: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PrimaryCommand {
    /// Replicate NAME to the replica at --peer: a cut every --interval, until SIGINT/SIGTERM.
    Run(PrimaryRunArgs),
}

#[derive(Debug, clap::Args)]
pub struct PrimaryRunArgs {
    /// The bdr device (/dev/mapper/NAME).
    pub name: String,
    /// The replica: HOST:PORT (default: from the config file).
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<String>,
    /// Time between the starts of two cuts (the RPO target): 500ms, 5s, 1m... (default 5s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub ship: ShipArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// How cuts are shipped (`primary run`, `sync --once`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShipArgs {
    /// Pre-copy (the default, or `precopy` in the config file): the dirty regions are first
    /// copied from the live device; the cut's snapshot then only ships what was written
    /// meanwhile, so copy-on-write slows the primary's writes only briefly.
    #[arg(long, overrides_with = "no_precopy")]
    pub precopy: bool,
    /// No pre-copy: ship every dirty region from the cut's snapshot, which then lives (and
    /// slows writes with copy-on-write) for the whole cut.
    #[arg(long, overrides_with = "precopy")]
    pub no_precopy: bool,
    /// zstd level of the shipped chunks: 1 (default); up to 19 for a slow link (smaller,
    /// slower); negative levels (-1 to -100) for a fast one (faster, larger).
    #[arg(long, value_name = "LEVEL", allow_negative_numbers = true,
          value_parser = parse_zstd_level)]
    pub zstd_level: Option<i32>,
    /// The config file's `precopy`, when the command line says neither.
    #[arg(skip)]
    pub precopy_default: Option<bool>,
}

impl ShipArgs {
    /// Whether to pre-copy: the last of --precopy / --no-precopy, else the config file,
    /// else yes.
    pub fn precopy(&self) -> bool {
        if self.precopy {
            true
        } else if self.no_precopy {
            false
        } else {
            self.precopy_default.unwrap_or(true)
        }
    }
}

fn parse_zstd_level(s: &str) -> Result<i32, String> {
    let l: i32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a zstd level (an integer, -100 to 19)"))?;
    bdr_sync::chunk::check_zstd_level(l)
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// One cut, then exit (the only mode).
    #[arg(long, required = true)]
    pub once: bool,
    /// The bdr device (/dev/mapper/NAME).
    pub name: String,
    /// The replica: HOST:PORT (default: from the config file).
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ship: ShipArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bdr device (/dev/mapper/NAME).
    pub name: String,
    /// The replica: HOST:PORT (default: from the config file).
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Receive cuts from a primary onto DEV, committing each atomically.
    Serve(ReplicaServeArgs),
    /// Show the replica's committed cut, its server and last error.
    Status(ReplicaStatusArgs),
    /// Stop being a replica: recover, check DEV holds a committed cut, leave it ready to
    /// mount read-write (a later `serve` refuses without --force).
    Promote(ReplicaPromoteArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReplicaStatusArgs {
    /// The volume (its config file gives the state dir).
    pub name: Option<String>,
    /// State dir (default: from the config file, else /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplicaPromoteArgs {
    /// The volume (its config file gives the device and the state dir).
    pub name: Option<String>,
    #[arg(long, value_name = "DEV")]
    pub device: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReplicaServeArgs {
    /// The volume: its config file (/etc/bdr/NAME.toml) gives what the options do not.
    pub name: Option<String>,
    /// The replica device (or file): at least as large as the primary's volume.
    #[arg(long, value_name = "DEV")]
    pub device: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (port 0: any; the status file says which). With a
    /// config file: its tunnel address only.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// State dir: state file, journal, lock, status (default /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Accept connections arriving on this interface only (SO_BINDTODEVICE); with a config
    /// file's [tunnel]: the tunnel's interface.
    #[arg(long, value_name = "IFACE")]
    pub bind_interface: Option<String>,
    /// Serve a promoted replica anyway: its committed state is dropped and the next
    /// primary re-seeds it with a rescan.
    #[arg(long)]
    pub force: bool,
}

/// Internal: take one cut of NAME, copy its image to a file, then commit or abort it.
#[derive(Debug, clap::Args)]
pub struct CutTestArgs {
    pub name: String,
    /// Directory for the copy-on-write file.
    #[arg(long)]
    pub cow: PathBuf,
    /// Size of the copy-on-write file.
    #[arg(long, default_value = "256M", value_parser = parse_size_arg)]
    pub cow_size: u64,
    /// Copy the cut's image here.
    #[arg(long)]
    pub copy_to: Option<PathBuf>,
    /// Merge the bits back instead of acknowledging them.
    #[arg(long)]
    pub abort: bool,
    /// Keep the cut live this many milliseconds before finishing it.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
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

    /// The block device to track, e.g. /dev/vdb (used whole; default: `device` of the
    /// config file).
    pub lower: Option<PathBuf>,

    /// Granularity of the dirty bitmap: a power of two, at least 4KiB (65536, 64K, 64KiB, 1M).
    /// Default 64KiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_region_size)]
    pub region_size: Option<RegionSize>,

    /// Bitmap id (1-63 of A-Z a-z 0-9 _ . : -); default: 32 random hex digits.
    #[arg(long, value_name = "ID", value_parser = parse_bitmap_id)]
    pub id: Option<String>,

    /// dm-bdr.ko to insert if `modprobe dm-bdr` fails.
    #[arg(long, value_name = "PATH", env = "BDR_KMOD")]
    pub kmod: Option<PathBuf>,

    /// State dir of the volume, where `bdr detach` saved the bitmap (default /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The bdr device to remove.
    pub name: String,

    /// State dir of the volume, where the bitmap is saved (default /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One device; all bdr devices if omitted.
    pub name: Option<String>,

    /// Machine-readable output: an object for NAME, an array otherwise.
    #[arg(long)]
    pub json: bool,

    /// State dir of NAME's replication (default /var/lib/bdr/NAME).
    #[arg(long, value_name = "DIR", requires = "name")]
    pub state_dir: Option<PathBuf>,
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
        assert_eq!(a.lower, Some(PathBuf::from("/dev/vdb")));
        assert_eq!(a.region_size, None);
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
        assert_eq!(a.region_size.unwrap().bytes(), 1 << 20);
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
            &["attach"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        for bad in ["", "0", "5x", "s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replication_commands() {
        let cli = parse(&[
            "primary",
            "run",
            "vol",
            "--peer",
            "h:1",
            "--interval",
            "1s",
            "--cow",
            "/c",
        ])
        .unwrap();
        let Command::Primary(PrimaryCommand::Run(r)) = cli.command else {
            panic!("not primary run")
        };
        assert_eq!(r.interval, Some(Duration::from_secs(1)));
        assert_eq!(r.source.cow, Some(PathBuf::from("/c")));
        assert!(
            parse(&["sync", "vol", "--peer", "h:1"]).is_err(),
            "--once required"
        );
        assert!(parse(&[
            "sync",
            "--once",
            "vol",
            "--peer",
            "h:1",
            "--stand-in-device",
            "d"
        ])
        .is_err());
        let cli = parse(&[
            "sync",
            "--once",
            "vol",
            "--peer",
            "h:1",
            "--stand-in-device",
            "d",
            "--stand-in-map",
            "m",
            "--cow-size",
            "64M",
        ])
        .unwrap();
        let Command::Sync(s) = cli.command else {
            panic!("not sync")
        };
        assert_eq!(s.source.cow_size, Some(64 << 20));
        // Missing values come from the config file, checked when the command runs.
        assert!(parse(&["replica", "serve", "--device", "d", "--listen", "a:1"]).is_ok());
        assert!(parse(&["replica", "serve", "vol", "extra"]).is_err());
        assert!(parse(&["replica", "promote", "--device", "d", "--state-dir", "s"]).is_ok());
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
        assert!(
            parse(&["status", "--state-dir", "/x"]).is_err(),
            "needs NAME"
        );
        assert!(parse(&["detach"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
