//! bdr's own WireGuard tunnel: one interface per volume with exactly one peer, configured
//! through wireguard-control (kernel: generic netlink; userspace: wireguard-go's UAPI
//! socket), its address and link state through rtnetlink.
//!
//! `up` is idempotent and makes the interface match the spec: it is bdr's interface, so
//! other peers and other addresses on it are removed. Re-running it with an unchanged spec
//! keeps the peer (and its session) in place.

mod rtnl;

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use wireguard_control::{Device, DeviceUpdate, InterfaceName, PeerConfigBuilder};

use crate::keygen;

/// Where wireguard-go puts its UAPI sockets (`IF.sock`), in the order wireguard-control
/// looks.
const SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

/// How long `down` waits for wireguard-go to exit after its socket is removed.
const USERSPACE_EXIT_WAIT: Duration = Duration::from_secs(3);

/// Which WireGuard implementation runs the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel module, configured over generic netlink.
    Kernel,
    /// wireguard-go (or `WG_USERSPACE_IMPLEMENTATION`), configured over its UAPI socket;
    /// started by `up` if it is not running for the interface.
    Userspace,
}

impl Backend {
    fn wg(self) -> wireguard_control::Backend {
        match self {
            Backend::Kernel => wireguard_control::Backend::Kernel,
            Backend::Userspace => wireguard_control::Backend::Userspace,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        })
    }
}

/// One managed tunnel: this host's side of a point-to-point WireGuard link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// e.g. `bdr-vol0`: 1 to 15 of `A-Z a-z 0-9 _ . -`.
    pub interface: String,
    pub backend: Backend,
    /// This host's private key file (0600, from `keygen`).
    pub private_key: PathBuf,
    /// UDP port; `None` keeps the current one (a random one for a new interface).
    pub listen_port: Option<u16>,
    /// This host's tunnel address and prefix, e.g. 10.99.0.1/30.
    pub address: IpAddr,
    pub prefix_len: u8,
    /// The peer's public key, base64.
    pub peer_public_key: String,
    /// Where to reach the peer; `None` lets WireGuard learn it from the peer's handshakes.
    pub peer_endpoint: Option<SocketAddr>,
    /// The peer's tunnel address: its /32 or /128 is the only allowed IP.
    pub peer_address: IpAddr,
    /// Persistent keepalive in seconds; `None` or 0: off.
    pub keepalive: Option<u16>,
    /// `None` or 0: no fwmark.
    pub fwmark: Option<u32>,
}

impl TunnelSpec {
    /// Checks what can be checked without the system.
    pub fn check(&self) -> Result<()> {
        validate_interface_name(&self.interface)?;
        let max = max_prefix(self.address);
        if self.prefix_len > max {
            bail!(
                "tunnel address {}/{}: the prefix length must be at most {max}",
                self.address,
                self.prefix_len
            );
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            bail!(
                "tunnel address {}: not usable as an interface address",
                self.address
            );
        }
        if self.peer_address == self.address {
            bail!(
                "the peer's tunnel address {} is this host's own: give the other host's",
                self.peer_address
            );
        }
        if !in_prefix(self.address, self.prefix_len, self.peer_address) {
            bail!(
                "the peer's tunnel address {} is outside {}/{}: no route would lead to it; \
                 put both addresses in one subnet (e.g. 10.99.0.1/30 and 10.99.0.2)",
                self.peer_address,
                self.address,
                self.prefix_len
            );
        }
        Ok(())
    }
}

/// Fails unless `name` can be a bdr tunnel interface: 1 to 15 characters of
/// `A-Z a-z 0-9 _ . -`, not `.` or `..`.
pub fn validate_interface_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 {
        bail!(
            "interface name `{name}` must be 1 to 15 characters long (it has {})",
            name.chars().count()
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        bail!("interface name `{name}` contains {c:?}: use only A-Z a-z 0-9 _ . -");
    }
    if name == "." || name == ".." {
        bail!("interface name `{name}` is not allowed by Linux");
    }
    Ok(())
}

fn interface_name(name: &str) -> Result<InterfaceName> {
    validate_interface_name(name)?;
    name.parse()
        .map_err(|e| anyhow!("interface name `{name}`: {e}"))
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// Whether `b` lies in `a/len` (false across families).
pub fn in_prefix(a: IpAddr, len: u8, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The wireguard-go UAPI socket for `interface`, if one exists.
fn userspace_socket(interface: &str) -> Option<PathBuf> {
    SOCKET_DIRS
        .iter()
        .map(|d| Path::new(d).join(format!("{interface}.sock")))
        .find(|p| p.exists())
}

/// An error from the system, with what to do for the cases that have a known fix.
fn explain(e: io::Error, what: String) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            anyhow!("{what}: {e}: this needs CAP_NET_ADMIN: run bdr as root")
        }
        _ => anyhow::Error::new(e).context(what),
    }
}

const NO_KERNEL_WG_FIX: &str = "load the module (modprobe wireguard), or run wireguard-go and \
     set backend = \"userspace\", or set tunnel.managed = false and bring your own tunnel";

/// Brings the tunnel up or brings it in line with `spec`: creates the interface if
/// missing, sets the private key, listen port and fwmark, makes `spec`'s peer the only
/// peer, makes `spec.address` the only address, sets the link up.
pub fn up(spec: &TunnelSpec) -> Result<()> {
    spec.check()?;
    let name = interface_name(&spec.interface)?;
    let iface = spec.interface.as_str();
    let private = keygen::read_private_key(&spec.private_key)?;
    let peer =
        keygen::parse_public_key(&spec.peer_public_key).context("the tunnel's peer public key")?;
    if peer == private.get_public() {
        bail!(
            "the peer public key is this host's own (derived from {}): give the other host's",
            spec.private_key.display()
        );
    }

    // A link of another kind under the name would make WireGuard's netlink answer "not
    // supported", which reads as "no WireGuard": say what is really wrong.
    let link = rtnl::link(iface).map_err(|e| explain(e, format!("look up interface {iface}")))?;
    if let Some(l) = &link {
        let expected = match spec.backend {
            Backend::Kernel => "wireguard",
            Backend::Userspace => "tun",
        };
        let kind = l.kind.as_deref().unwrap_or("device");
        if kind != expected {
            let hint = match kind {
                "tun" => " (wireguard-go may run it: set backend = \"userspace\", or stop it)",
                "wireguard" => " (a kernel WireGuard interface: set backend = \"kernel\")",
                _ => "",
            };
            bail!(
                "interface {iface} exists and is a `{kind}` link, not a {} WireGuard \
                 interface{hint}: remove it or choose another tunnel.interface",
                spec.backend
            );
        }
    }

    // Peers now: keeping ours in place (not replacing the whole list) keeps its session.
    let current = match link {
        Some(_) => Device::get(&name, spec.backend.wg()).ok(),
        None => None,
    };
    let mut peer_cfg = PeerConfigBuilder::new(&peer)
        .replace_allowed_ips()
        .add_allowed_ip(spec.peer_address, max_prefix(spec.peer_address))
        .set_persistent_keepalive_interval(spec.keepalive.unwrap_or(0));
    if let Some(ep) = spec.peer_endpoint {
        peer_cfg = peer_cfg.set_endpoint(ep);
    }
    let mut update = DeviceUpdate::new()
        .set_private_key(private)
        .set_fwmark(spec.fwmark.unwrap_or(0));
    if let Some(port) = spec.listen_port {
        update = update.set_listen_port(port);
    }
    match &current {
        Some(dev) if dev.peers.iter().any(|p| p.config.public_key == peer) => {
            for other in dev.peers.iter().filter(|p| p.config.public_key != peer) {
                update = update.remove_peer_by_key(&other.config.public_key);
            }
        }
        _ => update = update.replace_peers(),
    }
    update = update.add_peer(peer_cfg);
    apply(update, &name, spec.backend)?;

    let link = rtnl::link(iface)
        .map_err(|e| explain(e, format!("look up interface {iface}")))?
        .with_context(|| {
            format!("interface {iface} is missing after configuring it (did its process exit?)")
        })?;
    let addrs = rtnl::addresses(link.index)
        .map_err(|e| explain(e, format!("list the addresses of {iface}")))?;
    let want = (spec.address, spec.prefix_len);
    if !addrs.contains(&want) {
        rtnl::replace_address(link.index, spec.address, spec.prefix_len).map_err(|e| {
            explain(
                e,
                format!(
                    "add address {}/{} to {iface}",
                    spec.address, spec.prefix_len
                ),
            )
        })?;
    }
    for &(a, len) in addrs.iter().filter(|&&x| x != want && !is_link_local(x.0)) {
        rtnl::delete_address(link.index, a, len)
            .map_err(|e| explain(e, format!("remove stale address {a}/{len} from {iface}")))?;
    }
    if !link.up {
        rtnl::set_up(link.index).map_err(|e| explain(e, format!("set {iface} up")))?;
    }
    Ok(())
}

/// Applies `update`, creating the interface if missing. For the kernel, a "not supported"
/// answer gets one `modprobe wireguard` and a retry.
fn apply(update: DeviceUpdate, name: &InterfaceName, backend: Backend) -> Result<()> {
    let iface = name.as_str_lossy().into_owned();
    let first = update.clone().apply(name, backend.wg());
    let e = match (first, backend) {
        (Ok(()), _) => return Ok(()),
        (Err(e), Backend::Kernel) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => e,
        (Err(e), Backend::Kernel) => {
            return Err(explain(
                e,
                format!("create or configure WireGuard interface {iface}"),
            ))
        }
        (Err(e), Backend::Userspace) => return Err(explain_userspace(e, &iface)),
    };
    let modprobe = match Command::new("modprobe").arg("wireguard").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "modprobe wireguard failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run modprobe: {e}")),
    };
    tracing::info!(
        "creating {iface}: {e}; modprobe wireguard: {}",
        modprobe.as_deref().unwrap_or("loaded")
    );
    match update.apply(name, backend.wg()) {
        Ok(()) => Ok(()),
        Err(e2) if e2.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            bail!(
            "cannot create WireGuard interface {iface}: the kernel has no WireGuard ({}; {e2}): \
             {NO_KERNEL_WG_FIX}",
            modprobe.as_deref().unwrap_or("modprobe wireguard succeeded")
        )
        }
        Err(e2) => Err(explain(
            e2,
            format!("create or configure WireGuard interface {iface}"),
        )),
    }
}

fn explain_userspace(e: io::Error, iface: &str) -> anyhow::Error {
    let what = format!("configure {iface} through wireguard-go's UAPI socket");
    match e.kind() {
        io::ErrorKind::NotFound => anyhow!(
            "{what}: {e}: install wireguard-go (or name another userspace implementation in \
             WG_USERSPACE_IMPLEMENTATION), or use backend = \"kernel\""
        ),
        io::ErrorKind::AddrNotAvailable => anyhow!(
            "{what}: wireguard-go failed to start for {iface}: run `wireguard-go -f {iface}` to \
             see why (it needs /dev/net/tun and CAP_NET_ADMIN)"
        ),
        io::ErrorKind::InvalidInput => anyhow!(
            "{what}: wireguard-go refused the configuration (its log tells why; \
             `wireguard-go -f {iface}` runs it in the foreground)"
        ),
        _ => explain(e, what),
    }
}

/// Removes the tunnel interface (kernel link, or stops wireguard-go by removing its UAPI
/// socket). Not an error if it does not exist; refuses to delete a link that is neither a
/// WireGuard nor a tun interface.
pub fn down(interface: &str) -> Result<()> {
    validate_interface_name(interface)?;
    let mut stopped_userspace = false;
    for dir in SOCKET_DIRS {
        let sock = Path::new(dir).join(format!("{interface}.sock"));
        match fs::remove_file(&sock) {
            Ok(()) => stopped_userspace = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(explain(e, format!("remove {}", sock.display()))),
        }
        let _ = fs::remove_file(Path::new(dir).join(format!("{interface}.name")));
    }
    let lookup = |i: &str| rtnl::link(i).map_err(|e| explain(e, format!("look up {i}")));
    let Some(mut link) = lookup(interface)? else {
        return Ok(());
    };
    if stopped_userspace && link.kind.as_deref() == Some("tun") {
        // wireguard-go exits when its socket goes, and its tun device with it.
        let deadline = Instant::now() + USERSPACE_EXIT_WAIT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            match lookup(interface)? {
                None => return Ok(()),
                Some(l) => link = l,
            }
        }
    }
    match link.kind.as_deref() {
        Some("wireguard") | Some("tun") => match rtnl::delete_link(link.index) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(explain(e, format!("delete interface {interface}"))),
        },
        kind => bail!(
            "interface {interface} is a `{}` link, not a WireGuard interface: not deleting it",
            kind.unwrap_or("device")
        ),
    }
}

/// The state of a tunnel interface, for `bdr status` and the like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelStatus {
    pub interface: String,
    pub backend: Backend,
    /// Administratively up.
    pub up: bool,
    /// ADDR/PREFIX.
    pub addresses: Vec<String>,
    pub public_key: Option<String>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// bdr's interface has exactly one.
    pub peers: Vec<PeerStatus>,
}

/// One peer of a tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    /// ADDR/PREFIX.
    pub allowed_ips: Vec<String>,
    /// Seconds since the latest handshake; `None`: never.
    pub last_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Persistent keepalive seconds; `None`: off.
    pub keepalive: Option<u16>,
}

/// Reads the state of tunnel interface `interface` (kernel or wireguard-go).
pub fn show(interface: &str) -> Result<TunnelStatus> {
    let name = interface_name(interface)?;
    let socket = userspace_socket(interface);
    let backend = if socket.is_some() {
        Backend::Userspace
    } else {
        Backend::Kernel
    };
    let link = rtnl::link(interface).map_err(|e| explain(e, format!("look up {interface}")))?;
    let Some(link) = link else {
        bail!("no interface {interface}: the tunnel is not up");
    };
    let dev = Device::get(&name, backend.wg()).map_err(|e| match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOENT) => anyhow!(
            "interface {interface} is a `{}` link, not a WireGuard interface",
            link.kind.as_deref().unwrap_or("device")
        ),
        _ => explain(
            e,
            format!("read WireGuard interface {interface} ({backend})"),
        ),
    })?;
    let addresses = rtnl::addresses(link.index)
        .map_err(|e| explain(e, format!("list the addresses of {interface}")))?
        .into_iter()
        .map(|(a, len)| format!("{a}/{len}"))
        .collect();
    let now = SystemTime::now();
    let peers = dev
        .peers
        .iter()
        .map(|p| PeerStatus {
            public_key: p.config.public_key.to_base64(),
            endpoint: p.config.endpoint,
            allowed_ips: p
                .config
                .allowed_ips
                .iter()
                .map(|a| format!("{}/{}", a.address, a.cidr))
                .collect(),
            last_handshake: p
                .stats
                .last_handshake_time
                .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs())),
            rx_bytes: p.stats.rx_bytes,
            tx_bytes: p.stats.tx_bytes,
            keepalive: p.config.persistent_keepalive_interval.filter(|&k| k != 0),
        })
        .collect();
    Ok(TunnelStatus {
        interface: interface.to_string(),
        backend,
        up: link.up,
        addresses,
        public_key: dev.public_key.map(|k| k.to_base64()),
        listen_port: dev.listen_port,
        fwmark: dev.fwmark.filter(|&m| m != 0),
        peers,
    })
}

/// `wg show`-like text, one line per item (the same as `st.to_string()`).
pub fn render(st: &TunnelStatus) -> String {
    st.to_string()
}

/// `wg show`-like text.
impl fmt::Display for TunnelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.up { "up" } else { "down" };
        writeln!(
            f,
            "interface: {} ({}, {state})",
            self.interface, self.backend
        )?;
        if !self.addresses.is_empty() {
            writeln!(f, "  address: {}", self.addresses.join(", "))?;
        }
        if let Some(k) = &self.public_key {
            writeln!(f, "  public key: {k}")?;
        }
        if let Some(p) = self.listen_port {
            writeln!(f, "  listening port: {p}")?;
        }
        if let Some(m) = self.fwmark {
            writeln!(f, "  fwmark: {m:#x}")?;
        }
        if self.peers.is_empty() {
            writeln!(f, "  no peer")?;
        }
        for p in &self.peers {
            writeln!(f, "peer: {}", p.public_key)?;
            if let Some(e) = p.endpoint {
                writeln!(f, "  endpoint: {e}")?;
            }
            writeln!(f, "  allowed ips: {}", p.allowed_ips.join(", "))?;
            match p.last_handshake {
                Some(s) => writeln!(f, "  latest handshake: {s} s ago")?,
                None => writeln!(f, "  latest handshake: never")?,
            }
            writeln!(
                f,
                "  transfer: {} B received, {} B sent",
                p.rx_bytes, p.tx_bytes
            )?;
            if let Some(k) = p.keepalive {
                writeln!(f, "  persistent keepalive: every {k} s")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
