use std::os::unix::fs::PermissionsExt;

use wireguard_control::Key;

use super::*;

/// Whether this process has CAP_NET_ADMIN (root, normally), which changing links needs.
fn net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// A name no other test (or test process) uses at the same time.
fn test_iface(tag: &str) -> String {
    format!("bdrt{tag}{}", std::process::id() % 100_000)
}

fn spec(dir: &Path, iface: &str, backend: Backend) -> TunnelSpec {
    let key = dir.join(format!("{iface}.key"));
    keygen::keygen(&key, false).unwrap();
    TunnelSpec {
        interface: iface.to_string(),
        backend,
        private_key: key,
        listen_port: None,
        address: "10.99.7.1".parse().unwrap(),
        prefix_len: 30,
        peer_public_key: Key::generate_private().get_public().to_base64(),
        peer_endpoint: Some("127.0.0.1:51999".parse().unwrap()),
        peer_address: "10.99.7.2".parse().unwrap(),
        keepalive: Some(25),
        fwmark: None,
    }
}

#[test]
fn interface_names() {
    for ok in ["bdr-vol0", "a", "wg_0.x", "ABCDEFGHIJKLMNO", "..."] {
        validate_interface_name(ok).unwrap();
    }
    for (bad, why) in [
        ("", "1 to 15"),
        ("ABCDEFGHIJKLMNOP", "1 to 15"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("a:b", "contains ':'"),
        ("vol\u{e9}", "contains"),
        ("wg\n", "contains"),
        (".", "not allowed"),
        ("..", "not allowed"),
    ] {
        let e = validate_interface_name(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn spec_checks() {
    let d = tempfile::tempdir().unwrap();
    let good = spec(d.path(), "bdr-x", Backend::Kernel);
    good.check().unwrap();

    let mut s = good.clone();
    s.prefix_len = 33;
    assert!(s.check().unwrap_err().to_string().contains("at most 32"));
    s.prefix_len = 29;
    s.check().unwrap();
    s.prefix_len = 31; // 10.99.7.0 and .1
    let e = s.check().unwrap_err().to_string();
    assert!(e.contains("outside 10.99.7.1/31"), "{e}");

    let mut s = good.clone();
    s.peer_address = s.address;
    assert!(s.check().unwrap_err().to_string().contains("own"));
    s.peer_address = "fd00::2".parse().unwrap();
    assert!(s.check().unwrap_err().to_string().contains("outside"));

    let mut s = good.clone();
    s.address = "fd00:99::1".parse().unwrap();
    s.prefix_len = 64;
    s.peer_address = "fd00:99::2".parse().unwrap();
    s.check().unwrap();
    s.prefix_len = 129;
    assert!(s.check().unwrap_err().to_string().contains("at most 128"));

    let mut s = good;
    s.interface = "a very long interface".into();
    assert!(s.check().unwrap_err().to_string().contains("1 to 15"));
}

#[test]
fn prefixes() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(in_prefix(ip("10.99.0.1"), 30, ip("10.99.0.2")));
    assert!(in_prefix(ip("10.99.0.1"), 30, ip("10.99.0.3")));
    assert!(!in_prefix(ip("10.99.0.1"), 30, ip("10.99.0.4")));
    assert!(in_prefix(ip("10.99.0.1"), 0, ip("192.168.1.1")));
    assert!(in_prefix(ip("10.99.0.1"), 32, ip("10.99.0.1")));
    assert!(!in_prefix(ip("10.99.0.1"), 32, ip("10.99.0.2")));
    assert!(in_prefix(ip("fd00::1"), 126, ip("fd00::2")));
    assert!(!in_prefix(ip("fd00::1"), 127, ip("fd00::2")));
    assert!(in_prefix(ip("fd00::1"), 0, ip("2001:db8::1")));
    assert!(!in_prefix(ip("10.0.0.1"), 0, ip("::1")));
    assert!(is_link_local(ip("fe80::1")));
    assert!(!is_link_local(ip("fd00::1")));
}

/// Problems with the inputs are reported before anything touches the system.
#[test]
fn up_refuses_bad_inputs_first() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), &test_iface("i"), Backend::Kernel);

    fs::set_permissions(&s.private_key, fs::Permissions::from_mode(0o644)).unwrap();
    let e = up(&s).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    fs::set_permissions(&s.private_key, fs::Permissions::from_mode(0o600)).unwrap();

    let mut bad = s.clone();
    bad.peer_public_key = "nope".into();
    let e = format!("{:#}", up(&bad).unwrap_err());
    assert!(e.contains("not a WireGuard public key"), "{e}");

    let mut own = s.clone();
    own.peer_public_key = keygen::read_private_key(&s.private_key)
        .unwrap()
        .get_public()
        .to_base64();
    let e = up(&own).unwrap_err().to_string();
    assert!(e.contains("this host's own"), "{e}");

    // `lo` exists and is no WireGuard interface: refused by name, not "no WireGuard".
    let mut lo = s;
    lo.interface = "lo".into();
    let e = up(&lo).unwrap_err().to_string();
    assert!(e.contains("not a kernel WireGuard interface"), "{e}");
}

#[test]
fn down_and_show_of_missing_or_foreign_interfaces() {
    down(&test_iface("m")).unwrap();
    let e = show(&test_iface("m")).unwrap_err().to_string();
    assert!(e.contains("not up"), "{e}");
    let e = down("lo").unwrap_err().to_string();
    assert!(e.contains("not a WireGuard interface"), "{e}");
    assert!(rtnl::link("lo").unwrap().is_some(), "lo survived");
    assert!(down("bad name").is_err());
}

/// Without kernel WireGuard (this host has none and cannot load modules), `up` fails with
/// an error that names WireGuard and the ways out. Where the kernel has it, the tunnel
/// comes up and is checked instead. Needs CAP_NET_ADMIN.
#[test]
fn up_kernel_backend_on_this_host() {
    if !net_admin() {
        eprintln!("skipped: needs CAP_NET_ADMIN (root)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), &test_iface("k"), Backend::Kernel);
    match up(&s) {
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("up failed as expected: {e}");
            assert!(e.contains("WireGuard"), "{e}");
            assert!(e.contains("modprobe wireguard"), "{e}");
            assert!(e.contains("backend = \"userspace\""), "{e}");
            assert!(e.contains("managed = false"), "{e}");
            assert_eq!(rtnl::link(&s.interface).unwrap(), None);
        }
        Ok(()) => {
            let st = show(&s.interface);
            down(&s.interface).unwrap();
            let st = st.unwrap();
            assert_eq!(st.backend, Backend::Kernel);
            assert_eq!(st.addresses, ["10.99.7.1/30"]);
            assert_eq!(st.peers.len(), 1);
        }
    }
}

/// Address and link handling on a tun device (needs CAP_NET_ADMIN): what `up` does after WireGuard
/// is configured, and `down` of a tun without a wireguard-go socket. Needs CAP_NET_ADMIN.
#[test]
fn rtnl_on_a_tun_device() {
    if !net_admin() || !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs CAP_NET_ADMIN (root) and /dev/net/tun");
        return;
    }
    let iface = test_iface("t");
    let st = Command::new("ip")
        .args(["tuntap", "add", "mode", "tun", &iface])
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot create a tun device with `ip tuntap`");
        return;
    }
    let res = std::panic::catch_unwind(|| {
        let l = rtnl::link(&iface).unwrap().unwrap();
        assert_eq!(l.kind.as_deref(), Some("tun"));
        assert!(!l.up);
        let a: IpAddr = "10.99.8.1".parse().unwrap();
        let b: IpAddr = "fd00:99:8::1".parse().unwrap();
        rtnl::replace_address(l.index, a, 30).unwrap();
        rtnl::replace_address(l.index, a, 30).unwrap();
        rtnl::replace_address(l.index, b, 64).unwrap();
        let mut got = rtnl::addresses(l.index).unwrap();
        got.retain(|x| !is_link_local(x.0));
        got.sort();
        assert_eq!(got, [(a, 30), (b, 64)]);
        rtnl::delete_address(l.index, b, 64).unwrap();
        let mut got = rtnl::addresses(l.index).unwrap();
        got.retain(|x| !is_link_local(x.0));
        assert_eq!(got, [(a, 30)]);
        rtnl::set_up(l.index).unwrap();
        assert!(rtnl::link(&iface).unwrap().unwrap().up);
    });
    down(&iface).unwrap();
    assert_eq!(rtnl::link(&iface).unwrap(), None);
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
}

/// The whole of `up`, `show` and `down` through wireguard-go, where it is installed (needs
/// CAP_NET_ADMIN): configuration as specified, idempotent re-runs that keep the peer, stray peers
/// and addresses removed.
#[test]
fn userspace_up_show_down() {
    if !net_admin() || !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs CAP_NET_ADMIN (root) and /dev/net/tun");
        return;
    }
    if Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: wireguard-go is not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut s = spec(d.path(), &test_iface("u"), Backend::Userspace);
    s.listen_port = Some(40000 + (std::process::id() % 20000) as u16);
    let res = std::panic::catch_unwind(|| {
        up(&s).unwrap();
        let mut st = show(&s.interface).unwrap();
        // The tun device may get an IPv6 link-local address, and the keepalive sends a
        // handshake initiation to the (absent) peer at once.
        st.addresses.retain(|a| !a.starts_with("fe80:"));
        st.peers[0].tx_bytes = 0;
        let public = keygen::read_private_key(&s.private_key)
            .unwrap()
            .get_public()
            .to_base64();
        assert_eq!(
            st,
            TunnelStatus {
                interface: s.interface.clone(),
                backend: Backend::Userspace,
                up: true,
                addresses: vec!["10.99.7.1/30".into()],
                public_key: Some(public),
                listen_port: s.listen_port,
                fwmark: None,
                peers: vec![PeerStatus {
                    public_key: s.peer_public_key.clone(),
                    endpoint: s.peer_endpoint,
                    allowed_ips: vec!["10.99.7.2/32".into()],
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    keepalive: Some(25),
                }],
            }
        );
        let text = render(&st);
        assert!(text.contains("allowed ips: 10.99.7.2/32"), "{text}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["backend"], "userspace");

        // Someone adds a peer and an address; `up` again puts the spec back.
        let name: InterfaceName = s.interface.parse().unwrap();
        let stray = Key::generate_private().get_public();
        DeviceUpdate::new()
            .add_peer(
                PeerConfigBuilder::new(&stray).add_allowed_ip("10.99.7.3".parse().unwrap(), 32),
            )
            .apply(&name, wireguard_control::Backend::Userspace)
            .unwrap();
        let idx = rtnl::link(&s.interface).unwrap().unwrap().index;
        rtnl::replace_address(idx, "10.99.9.1".parse().unwrap(), 24).unwrap();
        assert_eq!(show(&s.interface).unwrap().peers.len(), 2);
        up(&s).unwrap();
        let mut st = show(&s.interface).unwrap();
        st.addresses.retain(|a| !a.starts_with("fe80:"));
        assert_eq!(st.addresses, ["10.99.7.1/30"]);
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.peers[0].public_key, s.peer_public_key);

        // A new spec: another peer, no keepalive, new address, fwmark.
        let mut s2 = s.clone();
        s2.peer_public_key = Key::generate_private().get_public().to_base64();
        s2.keepalive = None;
        s2.address = "fd00:99:7::1".parse().unwrap();
        s2.prefix_len = 64;
        s2.peer_address = "fd00:99:7::2".parse().unwrap();
        s2.peer_endpoint = None;
        s2.fwmark = Some(0x51);
        up(&s2).unwrap();
        let st = show(&s2.interface).unwrap();
        let mut addrs = st.addresses.clone();
        addrs.retain(|a| !a.starts_with("fe80:"));
        assert_eq!(addrs, ["fd00:99:7::1/64"]);
        assert_eq!(st.fwmark, Some(0x51));
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.peers[0].public_key, s2.peer_public_key);
        assert_eq!(st.peers[0].allowed_ips, ["fd00:99:7::2/128"]);
        assert_eq!(st.peers[0].keepalive, None);
        assert_eq!(st.peers[0].endpoint, None);
    });
    let down_res = down(&s.interface);
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
    down_res.unwrap();
    assert_eq!(rtnl::link(&s.interface).unwrap(), None);
    assert!(userspace_socket(&s.interface).is_none());
    down(&s.interface).unwrap();
}
