//! `bdr tunnel up|down|status NAME` and the tunnel the daemons bring up before they talk
//! to the peer: the `[tunnel]` table of the volume's config file, handed to `tunnel`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::{self, TunnelConfig};
use crate::tunnel::{self, Backend, TunnelSpec};

/// Resolve the endpoint now: WireGuard wants an address, the file may hold a host name.
fn resolve(endpoint: &str) -> Result<SocketAddr> {
    endpoint
        .to_socket_addrs()
        .with_context(|| format!("tunnel.peer_endpoint {endpoint}: cannot resolve it"))?
        .next()
        .with_context(|| format!("tunnel.peer_endpoint {endpoint} resolves to no address"))
}

/// The interface settings for `tunnel::up`.
pub fn spec(t: &TunnelConfig) -> Result<TunnelSpec> {
    Ok(TunnelSpec {
        interface: t.interface.clone(),
        backend: if t.userspace {
            Backend::Userspace
        } else {
            Backend::Kernel
        },
        private_key: t.private_key.clone(),
        listen_port: t.listen_port,
        address: t.address,
        prefix_len: t.prefix_len,
        peer_public_key: t.peer_public_key.clone(),
        peer_endpoint: t.peer_endpoint.as_deref().map(resolve).transpose()?,
        peer_address: t.peer_address,
        keepalive: t.keepalive,
        fwmark: t.fwmark,
    })
}

/// Bring the tunnel up (idempotent) and log it.
pub fn up(t: &TunnelConfig) -> Result<()> {
    let s = spec(t)?;
    tunnel::up(&s)
        .with_context(|| format!("cannot bring up WireGuard interface {}", t.interface))?;
    tracing::info!(
        interface = %t.interface,
        address = %format!("{}/{}", t.address, t.prefix_len),
        peer = %t.peer_address,
        endpoint = ?s.peer_endpoint,
        "tunnel up"
    );
    Ok(())
}

fn managed(name: &str, explicit: Option<&Path>) -> Result<TunnelConfig> {
    let Some(cfg) = config::load(name, explicit)? else {
        bail!(
            "{} does not exist: the tunnel of {name} is described there (see docs/config.md)",
            config::path_for(name, explicit).display()
        );
    };
    match &cfg.tunnel {
        Some(t) if t.managed => Ok(t.clone()),
        Some(_) => bail!(
            "{}: the tunnel of {name} is not managed by bdr (managed = false)",
            cfg.path.display()
        ),
        None => bail!("{} has no [tunnel] table", cfg.path.display()),
    }
}

pub fn run_up(name: &str, explicit: Option<&Path>) -> Result<()> {
    let t = managed(name, explicit)?;
    up(&t)?;
    println!(
        "{}: {}/{} -> {} up",
        t.interface, t.address, t.prefix_len, t.peer_address
    );
    Ok(())
}

pub fn run_down(name: &str, explicit: Option<&Path>) -> Result<()> {
    let t = managed(name, explicit)?;
    tunnel::down(&t.interface)?;
    println!("{}: down", t.interface);
    Ok(())
}

pub fn run_status(name: &str, explicit: Option<&Path>, json: bool) -> Result<()> {
    let t = managed(name, explicit)?;
    let st = tunnel::show(&t.interface)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", tunnel::render(&st));
    }
    Ok(())
}
