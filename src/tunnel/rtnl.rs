//! The few rtnetlink requests the tunnel needs beyond WireGuard's own: find a link, list,
//! add and remove its addresses, set it up, delete it. Synchronous, one socket per request
//! (through `netlink-request`, the crate wireguard-control uses for the same thing).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_request::netlink_request_rtnl;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `wireguard`, `tun`, ...; `None` for links without a kind (physical ones).
    pub kind: Option<String>,
}

fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    // NLM_F_ACK always: netlink-request reads until the ACK (or DONE for a dump).
    Ok(
        netlink_request_rtnl(msg, Some(NLM_F_REQUEST | NLM_F_ACK | flags))?
            .into_iter()
            .filter_map(|m| match m {
                NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(inner),
                    ..
                } => Some(inner),
                _ => None,
            })
            .collect(),
    )
}

/// The link named `name`; `None` if there is none.
pub fn link(name: &str) -> io::Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let replies = match request(RouteNetlinkMessage::GetLink(msg), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        r => r?,
    };
    Ok(replies.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link {
            index: l.header.index,
            up: l.header.flags.contains(LinkFlags::Up),
            kind: l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(kind_name(k)),
                    _ => None,
                }),
                _ => None,
            }),
        }),
        _ => None,
    }))
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        k => k.to_string(),
    }
}

/// Sets link `index` administratively up.
pub fn set_up(index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
}

/// Deletes link `index`.
pub fn delete_link(index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    request(RouteNetlinkMessage::DelLink(msg), 0).map(drop)
}

/// The addresses of link `index` with their prefix lengths.
pub fn addresses(index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
    let replies = request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
                // point-to-point links); IPv6 sends IFA_ADDRESS only.
                let local = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                local.or(addr).map(|ip| (ip, a.header.prefix_len))
            }
            _ => None,
        })
        .collect())
}

fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix_len;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    // As `ip addr add`: IFA_LOCAL and IFA_ADDRESS both the address (no point-to-point peer).
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

/// Adds `addr/prefix_len` to link `index`, or refreshes it if present (`ip addr replace`).
pub fn replace_address(index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
    request(
        RouteNetlinkMessage::NewAddress(address_message(index, addr, prefix_len)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
}

/// Removes `addr/prefix_len` from link `index`.
pub fn delete_address(index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
    request(
        RouteNetlinkMessage::DelAddress(address_message(index, addr, prefix_len)),
        0,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read-only requests work unprivileged: the loopback link exists, is up, has 127.0.0.1.
    #[test]
    fn loopback() {
        let lo = link("lo").unwrap().expect("lo exists");
        assert!(lo.up);
        assert!(lo.index > 0);
        let addrs = addresses(lo.index).unwrap();
        assert!(
            addrs.contains(&("127.0.0.1".parse().unwrap(), 8)),
            "{addrs:?}"
        );
        assert_eq!(link("bdr-no-such-if").unwrap(), None);
    }
}
