//! Per-volume configuration: one TOML file per volume and host, `/etc/bdr/NAME.toml` by
//! default (`--config FILE` or `$BDR_CONFIG_DIR/NAME.toml` elsewhere). The format is
//! documented in `docs/config.md`; `bdr config check NAME` validates a file.
//!
//! Invariants enforced here: a file is parsed strictly (an unknown key is an error, never
//! ignored), every value is checked before any command acts on it, and a value given on the
//! command line always wins over the file. A missing *default* file means "no config"; a
//! missing file named by `--config` is an error.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::{parse_duration, Command, PrimaryCommand, ReplicaCommand, ShipArgs, SourceArgs};
use crate::size::{parse_region_size, parse_size, RegionSize};
use crate::state::state_dir_of;
use crate::target::{validate_bitmap_id, validate_dm_name};
use crate::tunnel::{in_prefix, validate_interface_name};

/// Where config files live unless `--config` names one.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/bdr";

/// bdr's TCP port on the replica's tunnel address when the file gives none.
pub const DEFAULT_PORT: u16 = 7700;

/// WireGuard's customary UDP port, the default `tunnel.listen_port`.
pub const DEFAULT_WG_PORT: u16 = 51820;

/// Which side of the replication this host is for the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// The file as written. Strings are parsed by [`VolumeConfig::check`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub role: Role,
    /// Primary: the lower device bdr attaches over. Replica: the device cuts are written to.
    pub device: PathBuf,
    pub region_size: Option<String>,
    pub bitmap_id: Option<String>,
    pub interval: Option<String>,
    pub cow: Option<PathBuf>,
    pub cow_size: Option<String>,
    /// Pre-copy before each cut (default true).
    pub precopy: Option<bool>,
    /// zstd level of shipped chunks (default 1; -100 to 19).
    pub zstd_level: Option<i64>,
    pub state_dir: Option<PathBuf>,
    /// Primary without a managed tunnel: the replica's HOST:PORT.
    pub peer: Option<String>,
    /// Replica without a managed tunnel: ADDR:PORT to listen on.
    pub listen: Option<String>,
    /// bdr's TCP port on the replica's tunnel address.
    pub port: Option<u16>,
    pub tunnel: Option<TunnelFile>,
}

/// The `[tunnel]` table: a WireGuard interface bdr brings up itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// false: the tunnel exists already (wg-quick, systemd-networkd...); bdr only uses
    /// `address` / `peer_address` to pick its listen and connect addresses.
    pub managed: Option<bool>,
    pub interface: Option<String>,
    /// `kernel` (default) or `userspace` (wireguard-go's UAPI socket).
    pub backend: Option<String>,
    pub private_key: Option<PathBuf>,
    pub listen_port: Option<u16>,
    /// This host's tunnel address with its prefix, e.g. `10.99.0.1/30`.
    pub address: String,
    /// The other host's WireGuard public key (base64).
    pub peer_public_key: Option<String>,
    /// The other host's WireGuard endpoint, HOST:PORT (required on the primary).
    pub peer_endpoint: Option<String>,
    /// The other host's tunnel address (the only address allowed through the tunnel).
    pub peer_address: String,
    /// Persistent keepalive in seconds (default 25 on the primary; 0 turns it off).
    pub keepalive: Option<u16>,
    pub fwmark: Option<u32>,
}

/// A checked tunnel: every field typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelConfig {
    pub managed: bool,
    pub interface: String,
    /// The interface the replica's socket is bound to (SO_BINDTODEVICE): bdr's own one, or
    /// the one an unmanaged tunnel names. Without it, Linux (a weak-host stack) would accept
    /// a connection to the tunnel address arriving on any interface, WireGuard bypassed.
    pub bind_interface: Option<String>,
    pub userspace: bool,
    pub private_key: PathBuf,
    pub listen_port: Option<u16>,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub peer_public_key: String,
    pub peer_endpoint: Option<String>,
    pub peer_address: IpAddr,
    pub keepalive: Option<u16>,
    pub fwmark: Option<u32>,
}

/// A checked config file.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    pub name: String,
    pub path: PathBuf,
    pub role: Role,
    pub device: PathBuf,
    pub region_size: Option<RegionSize>,
    pub bitmap_id: Option<String>,
    pub interval: Option<Duration>,
    pub cow: Option<PathBuf>,
    pub cow_size: Option<u64>,
    pub precopy: Option<bool>,
    pub zstd_level: Option<i32>,
    pub state_dir: Option<PathBuf>,
    pub peer: Option<String>,
    pub listen: Option<String>,
    pub port: u16,
    pub tunnel: Option<TunnelConfig>,
}

/// One thing wrong with a config file: the key it is about and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn problem(out: &mut Vec<Problem>, key: &str, message: impl Into<String>) {
    out.push(Problem {
        key: key.to_string(),
        message: message.into(),
    });
}

/// The config dir: `$BDR_CONFIG_DIR` or `/etc/bdr`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("BDR_CONFIG_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR), PathBuf::from)
}

/// The file for volume `name`: `explicit`, else `<config dir>/NAME.toml`.
pub fn path_for(name: &str, explicit: Option<&Path>) -> PathBuf {
    explicit.map_or_else(
        || config_dir().join(format!("{name}.toml")),
        Path::to_path_buf,
    )
}

/// The default WireGuard interface of a volume: `bdr-NAME`, cut to the kernel's 15 bytes.
pub fn default_interface(name: &str) -> String {
    let mut s = format!("bdr-{name}");
    s.truncate(15);
    s
}

/// Read and parse (not check) a file. A TOML error names the line and the key.
pub fn parse_file(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().trim_end().replace('\n', "\n  ")
        )
    })
}

/// Load volume `name`'s config. `Ok(None)`: no `--config` and no default file.
pub fn load(name: &str, explicit: Option<&Path>) -> Result<Option<VolumeConfig>> {
    let path = path_for(name, explicit);
    if explicit.is_none() && !path.exists() {
        return Ok(None);
    }
    let file = parse_file(&path)?;
    let (cfg, problems) = check(name, &path, &file, false);
    match (cfg, problems.is_empty()) {
        (Some(cfg), true) => Ok(Some(cfg)),
        (_, _) => bail!(
            "{} is not valid:\n  {}\n(`bdr config check {name}` lists every problem)",
            path.display(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
}

/// Load the config and insist on its role (a primary command on a replica's file is a
/// mistake worth stopping).
pub fn load_for(name: &str, explicit: Option<&Path>, role: Role) -> Result<Option<VolumeConfig>> {
    let cfg = load(name, explicit)?;
    if let Some(c) = &cfg {
        if c.role != role {
            bail!(
                "{} is the config of the {} of {name}, and this is a {role} command: run it on \
                 the other host, or fix `role` in the file",
                c.path.display(),
                c.role
            );
        }
    }
    Ok(cfg)
}

fn parse_addr_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address (e.g. 10.99.0.1/30)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("'{s}': the prefix length must be 0-{max}"))?,
    };
    Ok((ip, len))
}

fn valid_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("'{s}' is not HOST:PORT")),
    }
}

fn check_key_file(out: &mut Vec<Problem>, key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Err(e) => problem(
            out,
            key,
            format!(
                "{}: {e}; create it with `bdr keygen --out {}`",
                path.display(),
                path.display()
            ),
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => problem(
            out,
            key,
            format!(
                "{} is readable by group or others (mode {:o}): run `chmod 600 {}`",
                path.display(),
                m.permissions().mode() & 0o777,
                path.display()
            ),
        ),
        Ok(_) => {
            if let Err(e) = crate::keygen::read_private_key(path) {
                problem(out, key, format!("{e:#}"));
            }
        }
    }
}

/// Check a parsed file. `deep` also looks at the machine: devices, directories and key
/// files exist and have the right kind and mode, the endpoint resolves.
pub fn check(
    name: &str,
    path: &Path,
    f: &ConfigFile,
    deep: bool,
) -> (Option<VolumeConfig>, Vec<Problem>) {
    let mut out = Vec::new();
    let p = &mut out;
    if let Err(e) = validate_dm_name(name) {
        problem(
            p,
            "(file name)",
            format!("'{name}' is not a volume name: {e}"),
        );
    }
    let primary = f.role == Role::Primary;
    let only = |p: &mut Vec<Problem>, key: &str, set: bool, role: Role| {
        if set && f.role != role {
            problem(
                p,
                key,
                format!(
                    "only means something on the {role}; remove it (role is {})",
                    f.role
                ),
            );
        }
    };
    only(p, "region_size", f.region_size.is_some(), Role::Primary);
    only(p, "bitmap_id", f.bitmap_id.is_some(), Role::Primary);
    only(p, "interval", f.interval.is_some(), Role::Primary);
    only(p, "cow", f.cow.is_some(), Role::Primary);
    only(p, "cow_size", f.cow_size.is_some(), Role::Primary);
    only(p, "precopy", f.precopy.is_some(), Role::Primary);
    only(p, "zstd_level", f.zstd_level.is_some(), Role::Primary);
    only(p, "peer", f.peer.is_some(), Role::Primary);
    only(p, "listen", f.listen.is_some(), Role::Replica);

    let region_size = f.region_size.as_deref().and_then(|s| {
        parse_region_size(s)
            .map_err(|e| problem(p, "region_size", e))
            .ok()
    });
    if let Some(id) = &f.bitmap_id {
        if let Err(e) = validate_bitmap_id(id) {
            problem(p, "bitmap_id", e);
        }
    }
    let interval = f.interval.as_deref().and_then(|s| {
        parse_duration(s)
            .map_err(|e| problem(p, "interval", e))
            .ok()
    });
    let cow_size = f.cow_size.as_deref().and_then(|s| {
        parse_size(s)
            .map_err(|e| problem(p, "cow_size", e.to_string()))
            .ok()
    });
    let zstd_level = f.zstd_level.and_then(|l| {
        i32::try_from(l)
            .map_err(|_| format!("zstd level {l} is out of range"))
            .and_then(bdr_sync::chunk::check_zstd_level)
            .map_err(|e| problem(p, "zstd_level", e))
            .ok()
    });
    if let Some(peer) = &f.peer {
        if let Err(e) = valid_host_port(peer) {
            problem(p, "peer", e);
        }
    }
    if let Some(l) = &f.listen {
        if l.parse::<SocketAddr>().is_err() {
            problem(
                p,
                "listen",
                format!("'{l}' is not ADDR:PORT (e.g. 10.99.0.2:7700)"),
            );
        }
    }
    if f.port == Some(0) {
        problem(p, "port", "must be 1-65535");
    }

    let tunnel = f
        .tunnel
        .as_ref()
        .and_then(|t| check_tunnel(name, f.role, t, p));
    let managed = tunnel.as_ref().is_some_and(|t| t.managed);
    if primary && f.peer.is_none() && tunnel.is_none() && f.tunnel.is_none() {
        problem(
            p,
            "peer",
            "missing: give `peer = \"HOST:PORT\"` or a [tunnel] table",
        );
    }
    if !primary && f.listen.is_none() && f.tunnel.is_none() {
        problem(
            p,
            "listen",
            "missing: give `listen = \"ADDR:PORT\"` or a [tunnel] table (the replica then \
             listens on its tunnel address only)",
        );
    }
    if primary && f.peer.is_some() && managed {
        problem(
            p,
            "peer",
            "with a managed [tunnel] the primary connects to tunnel.peer_address:port; remove \
             `peer`",
        );
    }

    if deep {
        check_machine(f, tunnel.as_ref(), p);
    }

    if !out.is_empty() {
        return (None, out);
    }
    let cfg = VolumeConfig {
        name: name.to_string(),
        path: path.to_path_buf(),
        role: f.role,
        device: f.device.clone(),
        region_size,
        bitmap_id: f.bitmap_id.clone(),
        interval,
        cow: f.cow.clone(),
        cow_size,
        precopy: f.precopy,
        zstd_level,
        state_dir: f.state_dir.clone(),
        peer: f.peer.clone(),
        listen: f.listen.clone(),
        port: f.port.unwrap_or(DEFAULT_PORT),
        tunnel,
    };
    (Some(cfg), out)
}

fn check_tunnel(
    name: &str,
    role: Role,
    t: &TunnelFile,
    p: &mut Vec<Problem>,
) -> Option<TunnelConfig> {
    let n0 = p.len();
    let managed = t.managed.unwrap_or(true);
    let address = parse_addr_prefix(&t.address)
        .map_err(|e| problem(p, "tunnel.address", e))
        .ok();
    let peer_address = t
        .peer_address
        .parse::<IpAddr>()
        .map_err(|_| {
            problem(
                p,
                "tunnel.peer_address",
                format!(
                    "'{}' is not an IP address (the other host's tunnel address, no prefix)",
                    t.peer_address
                ),
            )
        })
        .ok();
    if let (Some((a, len)), Some(pa)) = (address, peer_address) {
        if a == pa {
            problem(
                p,
                "tunnel.peer_address",
                "is this host's own tunnel address: give the other host's",
            );
        } else if !in_prefix(a, len, pa) {
            problem(
                p,
                "tunnel.peer_address",
                format!(
                    "{pa} is outside {} (tunnel.address): use one subnet",
                    t.address
                ),
            );
        }
    }
    let interface = t
        .interface
        .clone()
        .unwrap_or_else(|| default_interface(name));
    if let Err(e) = validate_interface_name(&interface) {
        problem(p, "tunnel.interface", format!("{e:#}"));
    }
    let userspace = match t.backend.as_deref() {
        None | Some("kernel") => false,
        Some("userspace") => true,
        Some(b) => {
            problem(
                p,
                "tunnel.backend",
                format!("'{b}': use \"kernel\" or \"userspace\" (wireguard-go)"),
            );
            false
        }
    };
    if managed {
        if t.private_key.is_none() {
            problem(
                p,
                "tunnel.private_key",
                "missing: the path of this host's key (`bdr keygen --out PATH` makes one)",
            );
        }
        match &t.peer_public_key {
            None => problem(
                p,
                "tunnel.peer_public_key",
                "missing: the other host's public key (printed by its `bdr keygen`)",
            ),
            Some(k) => {
                if let Err(e) = crate::keygen::parse_public_key(k) {
                    problem(p, "tunnel.peer_public_key", format!("{e:#}"));
                }
            }
        }
        match (&t.peer_endpoint, role) {
            (None, Role::Primary) => problem(
                p,
                "tunnel.peer_endpoint",
                "missing: the replica's WireGuard HOST:PORT (the primary dials it)",
            ),
            (Some(e), _) => {
                if let Err(e) = valid_host_port(e) {
                    problem(p, "tunnel.peer_endpoint", e);
                }
            }
            (None, Role::Replica) => {}
        }
        if t.listen_port == Some(0) {
            problem(p, "tunnel.listen_port", "must be 1-65535");
        }
    } else {
        for (set, key) in [
            (t.private_key.is_some(), "tunnel.private_key"),
            (t.peer_public_key.is_some(), "tunnel.peer_public_key"),
            (t.peer_endpoint.is_some(), "tunnel.peer_endpoint"),
            (t.listen_port.is_some(), "tunnel.listen_port"),
            (t.keepalive.is_some(), "tunnel.keepalive"),
            (t.backend.is_some(), "tunnel.backend"),
            (t.fwmark.is_some(), "tunnel.fwmark"),
        ] {
            if set {
                problem(
                    p,
                    key,
                    "is set but `managed = false`: bdr does not configure this tunnel; remove it",
                );
            }
        }
    }
    if p.len() != n0 {
        return None;
    }
    let (address, prefix_len) = address?;
    let keepalive = match (t.keepalive, role) {
        (Some(0), _) => None,
        (Some(k), _) => Some(k),
        (None, Role::Primary) => Some(25),
        (None, Role::Replica) => None,
    };
    let listen_port = match (t.listen_port, role) {
        (Some(l), _) => Some(l),
        (None, Role::Replica) => Some(DEFAULT_WG_PORT),
        (None, Role::Primary) => None,
    };
    Some(TunnelConfig {
        managed,
        bind_interface: if managed {
            Some(interface.clone())
        } else {
            t.interface.clone()
        },
        interface,
        userspace,
        private_key: t.private_key.clone().unwrap_or_default(),
        listen_port: managed.then_some(listen_port).flatten(),
        address,
        prefix_len,
        peer_public_key: t.peer_public_key.clone().unwrap_or_default(),
        peer_endpoint: t.peer_endpoint.clone(),
        peer_address: peer_address?,
        keepalive: managed.then_some(keepalive).flatten(),
        fwmark: t.fwmark,
    })
}

fn check_machine(f: &ConfigFile, tunnel: Option<&TunnelConfig>, p: &mut Vec<Problem>) {
    match std::fs::metadata(&f.device) {
        Err(e) => problem(p, "device", format!("{}: {e}", f.device.display())),
        Ok(m) if !(m.file_type().is_block_device() || m.is_file()) => problem(
            p,
            "device",
            format!("{} is not a block device", f.device.display()),
        ),
        Ok(_) => {}
    }
    if let Some(cow) = &f.cow {
        match std::fs::metadata(cow) {
            Err(e) => problem(
                p,
                "cow",
                format!(
                    "{}: {e} (give an existing directory or a block device)",
                    cow.display()
                ),
            ),
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_block_device() => {
                if f.cow_size.is_some() {
                    problem(
                        p,
                        "cow_size",
                        "applies to a cow directory; a cow device is used whole: remove it",
                    );
                }
            }
            Ok(_) => problem(
                p,
                "cow",
                format!(
                    "{} is neither a directory nor a block device",
                    cow.display()
                ),
            ),
        }
    } else if f.role == Role::Primary {
        problem(
            p,
            "cow",
            "missing: a directory or block device for the blocks overwritten while a cut ships",
        );
    }
    if let Some(dir) = &f.state_dir {
        if let Ok(m) = std::fs::metadata(dir) {
            if !m.is_dir() {
                problem(
                    p,
                    "state_dir",
                    format!("{} is not a directory", dir.display()),
                );
            } else if m.permissions().mode() & 0o077 != 0 {
                problem(
                    p,
                    "state_dir",
                    format!(
                        "{} is open to group or others (mode {:o}): run `chmod 700 {}`",
                        dir.display(),
                        m.permissions().mode() & 0o777,
                        dir.display()
                    ),
                );
            }
        }
    }
    // From the raw table: a key file is worth checking even when other tunnel keys are bad.
    if let Some(t) = f.tunnel.as_ref().filter(|t| t.managed.unwrap_or(true)) {
        if let Some(key) = &t.private_key {
            check_key_file(p, "tunnel.private_key", key);
        }
    }
    if let Some(t) = tunnel.filter(|t| t.managed) {
        if let Some(ep) = &t.peer_endpoint {
            if ep
                .to_socket_addrs()
                .map_or(true, |mut a| a.next().is_none())
            {
                problem(
                    p,
                    "tunnel.peer_endpoint",
                    format!("'{ep}' does not resolve to an address"),
                );
            }
        }
    }
}

impl VolumeConfig {
    /// The address the primary connects to: `peer`, or the replica's tunnel address.
    pub fn peer_addr(&self) -> Option<String> {
        self.peer.clone().or_else(|| {
            self.tunnel
                .as_ref()
                .map(|t| SocketAddr::new(t.peer_address, self.port).to_string())
        })
    }

    /// The address the replica listens on: `listen`, or its own tunnel address only.
    pub fn listen_addr(&self) -> Option<String> {
        self.listen.clone().or_else(|| {
            self.tunnel
                .as_ref()
                .map(|t| SocketAddr::new(t.address, self.port).to_string())
        })
    }

    /// The managed tunnel, if bdr brings one up for this volume.
    pub fn managed_tunnel(&self) -> Option<&TunnelConfig> {
        self.tunnel.as_ref().filter(|t| t.managed)
    }
}

/// A value the command needs, from the command line or the config file.
pub fn required<T>(v: Option<T>, what: &str, name: &str) -> Result<T> {
    v.ok_or_else(|| {
        anyhow::anyhow!(
            "{what} is missing: give it on the command line, or write {} (see docs/config.md)",
            path_for(name, None).display()
        )
    })
}

fn fill<T>(slot: &mut Option<T>, v: Option<T>) {
    if slot.is_none() {
        *slot = v;
    }
}

/// The file's `zstd_level` and `precopy` under what the command line said.
fn fill_ship(s: &mut ShipArgs, c: &VolumeConfig) {
    fill(&mut s.zstd_level, c.zstd_level);
    s.precopy_default = c.precopy;
}

/// Fill what the command line left out from the volume's config file, in place. A value
/// given on the command line always wins. Errors: an invalid file, or a file of the
/// other role.
pub fn apply(cmd: &mut Command, explicit: Option<&Path>) -> Result<()> {
    fn fill_source(s: &mut SourceArgs, c: &VolumeConfig) {
        fill(&mut s.cow, c.cow.clone());
        fill(&mut s.cow_size, c.cow_size);
        fill(&mut s.state_dir, c.state_dir.clone());
    }
    match cmd {
        Command::Attach(a) => {
            if let Some(c) = load_for(&a.name, explicit, Role::Primary)? {
                fill(&mut a.lower, Some(c.device.clone()));
                fill(&mut a.region_size, c.region_size);
                fill(&mut a.id, c.bitmap_id.clone());
                fill(&mut a.state_dir, c.state_dir);
            }
        }
        Command::Detach(d) => {
            if let Some(c) = load_for(&d.name, explicit, Role::Primary)? {
                fill(&mut d.state_dir, c.state_dir);
            }
        }
        Command::Status(s) => {
            if let Some(name) = &s.name {
                if let Some(c) = load(name, explicit)? {
                    fill(&mut s.state_dir, c.state_dir);
                }
            }
        }
        Command::Primary(PrimaryCommand::Run(a)) => {
            if let Some(c) = load_for(&a.name, explicit, Role::Primary)? {
                fill(&mut a.peer, c.peer_addr());
                fill(&mut a.interval, c.interval);
                fill_ship(&mut a.ship, &c);
                fill_source(&mut a.source, &c);
            }
        }
        Command::Sync(a) => {
            if let Some(c) = load_for(&a.name, explicit, Role::Primary)? {
                fill(&mut a.peer, c.peer_addr());
                fill_ship(&mut a.ship, &c);
                fill_source(&mut a.source, &c);
            }
        }
        Command::Verify(a) => {
            if let Some(c) = load_for(&a.name, explicit, Role::Primary)? {
                fill(&mut a.peer, c.peer_addr());
                fill_source(&mut a.source, &c);
            }
        }
        Command::Replica(r) => {
            let (name, device, state_dir) = match r {
                ReplicaCommand::Serve(a) => {
                    if let Some(c) = named_replica(a.name.as_deref(), explicit)? {
                        fill(&mut a.listen, c.listen_addr());
                        let bind = c.tunnel.as_ref().and_then(|t| t.bind_interface.clone());
                        fill(&mut a.bind_interface, bind);
                    }
                    (&a.name, Some(&mut a.device), &mut a.state_dir)
                }
                ReplicaCommand::Status(a) => (&a.name, None, &mut a.state_dir),
                ReplicaCommand::Promote(a) => (&a.name, Some(&mut a.device), &mut a.state_dir),
            };
            if let Some(n) = name.as_deref() {
                if let Some(c) = named_replica(Some(n), explicit)? {
                    if let Some(d) = device {
                        fill(d, Some(c.device.clone()));
                    }
                    fill(state_dir, c.state_dir.clone());
                }
                fill(state_dir, Some(state_dir_of(n, None)));
            }
        }
        _ => {}
    }
    Ok(())
}

fn named_replica(name: Option<&str>, explicit: Option<&Path>) -> Result<Option<VolumeConfig>> {
    match name {
        Some(n) => load_for(n, explicit, Role::Replica),
        None if explicit.is_some() => bail!("--config needs the volume NAME too"),
        None => Ok(None),
    }
}

/// The managed tunnel a command of volume `name` needs up before it talks to the peer.
pub fn tunnel_of(cmd: &Command, explicit: Option<&Path>) -> Result<Option<TunnelConfig>> {
    let (name, role) = match cmd {
        Command::Primary(PrimaryCommand::Run(a)) => (Some(&a.name), Role::Primary),
        Command::Sync(a) => (Some(&a.name), Role::Primary),
        Command::Verify(a) => (Some(&a.name), Role::Primary),
        Command::Replica(ReplicaCommand::Serve(a)) => (a.name.as_ref(), Role::Replica),
        _ => return Ok(None),
    };
    let Some(name) = name else { return Ok(None) };
    Ok(load_for(name, explicit, role)?.and_then(|c| c.managed_tunnel().cloned()))
}

/// `bdr config check NAME`: every problem of the file, one per line; exit status 1 if any.
pub fn run_check(name: &str, explicit: Option<&Path>) -> Result<()> {
    let path = path_for(name, explicit);
    if !path.exists() {
        bail!(
            "{} does not exist: write it (see docs/config.md) or name another file with --config",
            path.display()
        );
    }
    let file = parse_file(&path)?;
    let (cfg, problems) = check(name, &path, &file, true);
    if let Some(cfg) = cfg {
        println!("{}: ok ({} of {name})", path.display(), cfg.role);
        if let Some(peer) = cfg.peer_addr().filter(|_| cfg.role == Role::Primary) {
            println!("  replicates {} to {peer}", cfg.device.display());
        }
        if let Some(l) = cfg.listen_addr().filter(|_| cfg.role == Role::Replica) {
            println!("  serves {} on {l}", cfg.device.display());
        }
        if let Some(t) = cfg.managed_tunnel() {
            println!(
                "  tunnel {} {}/{} -> {} via {}",
                t.interface,
                t.address,
                t.prefix_len,
                t.peer_address,
                t.peer_endpoint
                    .as_deref()
                    .unwrap_or("(the primary dials in)")
            );
        }
        return Ok(());
    }
    eprintln!("{}: {} problem(s):", path.display(), problems.len());
    for pr in &problems {
        eprintln!("  {pr}");
    }
    bail!("{} is not valid", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, toml::de::Error> {
        toml::from_str(text)
    }

    fn problems(text: &str) -> Vec<Problem> {
        let f = parse(text).expect("parses");
        check("vol0", Path::new("/etc/bdr/vol0.toml"), &f, false).1
    }

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    fn primary() -> String {
        format!(
            r#"
role = "primary"
device = "/dev/vg0/data"
interval = "5s"
cow = "/var/lib/bdr/vol0"
cow_size = "2GiB"
region_size = "64KiB"

[tunnel]
private_key = "/etc/bdr/vol0.key"
address = "10.99.0.1/30"
peer_public_key = "{KEY}"
peer_endpoint = "192.0.2.20:51820"
peer_address = "10.99.0.2"
"#
        )
    }

    #[test]
    fn a_primary_with_a_tunnel() {
        let f = parse(&primary()).unwrap();
        let (cfg, p) = check("vol0", Path::new("x"), &f, false);
        assert!(p.is_empty(), "{p:?}");
        let cfg = cfg.unwrap();
        assert_eq!(cfg.peer_addr().as_deref(), Some("10.99.0.2:7700"));
        let t = cfg.managed_tunnel().unwrap();
        assert_eq!(t.interface, "bdr-vol0");
        assert_eq!(t.keepalive, Some(25));
        assert_eq!(t.listen_port, None);
        assert_eq!(cfg.interval, Some(Duration::from_secs(5)));
        assert_eq!(cfg.cow_size, Some(2 << 30));
    }

    #[test]
    fn a_replica_listens_on_its_tunnel_address_only() {
        let f = parse(&format!(
            r#"
role = "replica"
device = "/dev/vg1/vol0"
port = 7801
[tunnel]
private_key = "/etc/bdr/vol0.key"
address = "fd00::2/64"
peer_public_key = "{KEY}"
peer_address = "fd00::1"
"#
        ))
        .unwrap();
        let (cfg, p) = check("vol0", Path::new("x"), &f, false);
        assert!(p.is_empty(), "{p:?}");
        let cfg = cfg.unwrap();
        assert_eq!(cfg.listen_addr().as_deref(), Some("[fd00::2]:7801"));
        let t = cfg.managed_tunnel().unwrap();
        assert_eq!(t.listen_port, Some(DEFAULT_WG_PORT));
        assert_eq!(t.keepalive, None);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors_with_the_key() {
        let e = parse("role = \"primary\"\ndevice = \"/d\"\nintervall = \"5s\"\n").unwrap_err();
        assert!(e.to_string().contains("intervall"), "{e}");
        let e = parse("role = \"boss\"\ndevice = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("boss"), "{e}");
        let e = parse("role = \"primary\"\ndevice = 3\n").unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = primary()
            .replace("\"5s\"", "\"5 parsecs\"")
            .replace("\"64KiB\"", "\"48K\"")
            .replace("\"2GiB\"", "\"lots\"")
            .replace("10.99.0.2\"", "10.98.0.2\"")
            .replace(KEY, "not-a-key")
            .replace("192.0.2.20:51820", "192.0.2.20");
        let keys: Vec<String> = problems(&bad).into_iter().map(|p| p.key).collect();
        for k in [
            "interval",
            "region_size",
            "cow_size",
            "tunnel.peer_address",
            "tunnel.peer_public_key",
            "tunnel.peer_endpoint",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
    }

    /// `precopy` and `zstd_level`: typed, range-checked, primary only, and they reach the
    /// command's ship options unless the command line says otherwise.
    #[test]
    fn precopy_and_zstd_level() {
        let base = "role = \"primary\"\ndevice = \"/d\"\npeer = \"h:1\"\n";
        let f = parse(&format!("{base}precopy = false\nzstd_level = -7\n")).unwrap();
        let (cfg, p) = check("vol0", Path::new("/x.toml"), &f, false);
        assert!(p.is_empty(), "{p:?}");
        let cfg = cfg.unwrap();
        assert_eq!((cfg.precopy, cfg.zstd_level), (Some(false), Some(-7)));
        let p = problems(&format!("{base}zstd_level = 30\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "zstd_level");
        assert!(p[0].to_string().contains("-100 (fastest) to 19"), "{p:?}");
        assert!(parse(&format!("{base}precopy = \"no\"\n")).is_err());
        let p = problems(
            "role = \"replica\"\ndevice = \"/d\"\nlisten = \"1.2.3.4:5\"\nprecopy = true\n",
        );
        assert_eq!(
            p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["precopy"]
        );

        let mut ship = ShipArgs::default();
        fill_ship(&mut ship, &cfg);
        assert_eq!(ship.zstd_level, Some(-7));
        assert!(!ship.precopy());
        ship.precopy = true;
        assert!(ship.precopy(), "--precopy overrides the file");
        let mut ship = ShipArgs {
            zstd_level: Some(3),
            ..ShipArgs::default()
        };
        fill_ship(&mut ship, &cfg);
        assert_eq!(ship.zstd_level, Some(3), "the command line wins");
    }

    #[test]
    fn role_specific_keys() {
        let p = problems("role = \"replica\"\ndevice = \"/d\"\ninterval = \"1s\"\n");
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"interval"), "{p:?}");
        assert!(keys.contains(&"listen"), "{p:?}");
        let p = problems("role = \"primary\"\ndevice = \"/d\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "peer");
        assert!(problems("role = \"primary\"\ndevice = \"/d\"\npeer = \"h:1\"\n").is_empty());
    }

    #[test]
    fn unmanaged_tunnel_only_needs_addresses() {
        let p = problems(
            "role = \"primary\"\ndevice = \"/d\"\n[tunnel]\nmanaged = false\n\
             address = \"10.0.0.1/24\"\npeer_address = \"10.0.0.9\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let p = problems(
            "role = \"primary\"\ndevice = \"/d\"\n[tunnel]\nmanaged = false\n\
             address = \"10.0.0.1/24\"\npeer_address = \"10.0.0.9\"\nkeepalive = 5\n",
        );
        assert_eq!(p[0].key, "tunnel.keepalive");
    }

    #[test]
    fn subnets() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_prefix(a("10.99.0.1"), 30, a("10.99.0.2")));
        assert!(!in_prefix(a("10.99.0.1"), 30, a("10.99.0.5")));
        assert!(in_prefix(a("10.99.0.1"), 0, a("99.0.0.0")));
        assert!(!in_prefix(a("10.99.0.1"), 0, a("fd00::1")));
        assert!(in_prefix(a("fd00::1"), 64, a("fd00::2")));
        assert_eq!(parse_addr_prefix("10.0.0.1").unwrap().1, 32);
        assert!(parse_addr_prefix("10.0.0.1/33").is_err());
        assert!(parse_addr_prefix("fd00::1/129").is_err());
    }

    #[test]
    fn interface_names() {
        assert_eq!(default_interface("vol0"), "bdr-vol0");
        assert_eq!(default_interface("a-very-long-volume"), "bdr-a-very-long");
        assert!(validate_interface_name("bdr-vol0").is_ok());
        assert!(validate_interface_name("").is_err());
        assert!(validate_interface_name("a/b").is_err());
        assert!(validate_interface_name("sixteen-chars-xx").is_err());
    }
}
