//! `bdr keygen`, `bdr config check` and config files driving commands, end to end (the
//! tunnel itself needs a kernel with WireGuard: see the VM suite `tunnel`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn bdr(config_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdr"))
        .args(args)
        .env("BDR_CONFIG_DIR", config_dir)
        .env_remove("RUST_LOG")
        .env_remove("BDR_KMOD")
        .output()
        .expect("run bdr")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Site { dir }
    }
    fn p(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Output {
        bdr(self.dir.path(), args)
    }
    fn keygen(&self, name: &str) -> String {
        let key = self.p(name);
        let o = self.run(&["keygen", "--out", key.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).trim().to_string()
    }
    /// A valid primary config with a managed tunnel.
    fn primary(&self, peer_key: &str) -> String {
        let dev = self.p("disk.img");
        fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
        fs::create_dir_all(self.p("cow")).unwrap();
        format!(
            "role = \"primary\"\ndevice = \"{}\"\ninterval = \"2s\"\ncow = \"{}\"\n\
             cow_size = \"64MiB\"\nstate_dir = \"{}\"\n\n[tunnel]\nprivate_key = \"{}\"\n\
             address = \"10.99.0.1/30\"\npeer_public_key = \"{peer_key}\"\n\
             peer_endpoint = \"127.0.0.1:51820\"\npeer_address = \"10.99.0.2\"\n",
            dev.display(),
            self.p("cow").display(),
            self.p("state").display(),
            self.p("vol0.key").display()
        )
    }
    fn write(&self, name: &str, text: &str) {
        fs::write(self.p(name), text).unwrap();
    }
}

#[test]
fn keygen_writes_a_private_0600_key_and_prints_the_public_one() {
    let s = Site::new();
    let nested = s.p("keys/vol0.key");
    let o = s.run(&["keygen", "--out", nested.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let public = text(&o.stdout).trim().to_string();
    assert_eq!(public.len(), 44, "{public}");
    assert_eq!(mode(&nested), 0o600);
    assert_eq!(mode(&s.p("keys")), 0o700);
    let private = fs::read_to_string(&nested).unwrap();
    assert_ne!(private.trim(), public);
    // Never overwritten by accident.
    let o = s.run(&["keygen", "--out", nested.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(fs::read_to_string(&nested).unwrap(), private);
    let o = s.run(&["keygen", "--force", "--out", nested.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(text(&o.stdout).trim(), public);
}

#[test]
fn config_check_accepts_a_good_file_and_names_each_problem() {
    let s = Site::new();
    s.keygen("vol0.key");
    let peer = Site::new().keygen("peer.key");
    s.write("vol0.toml", &s.primary(&peer));
    let o = s.run(&["config", "check", "vol0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("ok (primary of vol0)"), "{out}");
    assert!(out.contains("10.99.0.2:7700"), "{out}");

    // Several mistakes at once: every one is reported with its key.
    let bad = s
        .primary(&peer)
        .replace("\"2s\"", "\"two seconds\"")
        .replace("10.99.0.2\"", "10.99.1.2\"")
        .replace(&peer, "AAAA");
    s.write("vol0.toml", &bad);
    fs::set_permissions(s.p("vol0.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let o = s.run(&["config", "check", "vol0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    for want in [
        "4 problem(s)",
        "interval: 'two seconds' is not a duration",
        "tunnel.peer_address: 10.99.1.2 is outside 10.99.0.1/30",
        "tunnel.peer_public_key:",
        "tunnel.private_key:",
        "chmod 600",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_line_and_key() {
    let s = Site::new();
    s.write(
        "vol0.toml",
        "role = \"primary\"\ndevice = \"/d\"\npeer = \"h:1\"\nintervall = \"5s\"\n",
    );
    let o = s.run(&["config", "check", "vol0"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("intervall") && err.contains("line 4"), "{err}");
    // Any command of the volume refuses the broken file instead of ignoring it.
    let o = s.run(&["sync", "--once", "vol0"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("intervall"), "{}", text(&o.stderr));
    // No file at the default place: options only, and the error says what is missing.
    let o = s.run(&["sync", "--once", "other"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--peer is missing"),
        "{}",
        text(&o.stderr)
    );
    // A file named by --config must exist.
    let o = s.run(&["--config", "/nonexistent/x.toml", "config", "check", "vol0"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("/nonexistent/x.toml"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_command_of_the_other_role_is_refused() {
    let s = Site::new();
    s.write(
        "vol0.toml",
        "role = \"replica\"\ndevice = \"/d\"\nlisten = \"127.0.0.1:7700\"\n",
    );
    let o = s.run(&["primary", "run", "vol0"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("config of the replica of vol0"), "{err}");
}

#[test]
fn a_group_readable_key_is_refused_by_tunnel_up() {
    let s = Site::new();
    s.keygen("vol0.key");
    let peer = Site::new().keygen("peer.key");
    s.write("vol0.toml", &s.primary(&peer));
    fs::set_permissions(s.p("vol0.key"), fs::Permissions::from_mode(0o640)).unwrap();
    let o = s.run(&["tunnel", "up", "vol0"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

/// Options override the file: the replica serves a stand-in file from its config, on the
/// address given on the command line, and `bdr status NAME` shows the replica.
#[test]
fn replica_serve_takes_its_config_and_options_override_it() {
    let s = Site::new();
    let dev = s.p("replica.img");
    fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
    s.write(
        "vol0.toml",
        &format!(
            "role = \"replica\"\ndevice = \"{}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:1\"\n",
            dev.display(),
            s.p("rstate").display()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdr"))
        .args(["replica", "serve", "vol0", "--listen", "127.0.0.1:0"])
        .env("BDR_CONFIG_DIR", s.dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = s.p("rstate/replica-status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut listen = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(t) = fs::read_to_string(&status) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                listen = v["listen"].as_str().unwrap_or("").to_string();
                if !listen.is_empty() {
                    break;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = s.run(&["status", "vol0", "--json"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        listen.starts_with("127.0.0.1:") && listen != "127.0.0.1:1",
        "{listen}"
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["server"].as_str(), Some("serving"), "{v}");
    assert!(
        v["state_dir"].as_str().unwrap().ends_with("rstate"),
        "the state dir of the config file: {v}"
    );
}
