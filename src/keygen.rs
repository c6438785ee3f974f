//! WireGuard keys for the managed tunnel: generate a private key into a file that is 0600
//! from the moment it exists, read one back (refusing a file others can read), parse a
//! peer's public key.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use wireguard_control::Key;

use crate::private_file;

/// A key file is 44 base64 characters and a newline; anything much longer is not one.
const MAX_KEY_FILE: u64 = 256;

/// Generates a private key, writes it base64 to `private_path` (mode 0600, parent dirs
/// created 0700) and returns the base64 public key. An existing file is refused unless
/// `force`, which replaces it atomically.
pub fn keygen(private_path: &Path, force: bool) -> Result<String> {
    let private = Key::generate_private();
    let text = format!("{}\n", private.to_base64());
    if let Some(dir) = private_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_file::ensure_dir(dir)?;
    }
    if force {
        // A fresh 0600 temporary file renamed over the old one: an old file's looser mode
        // never applies to the new key.
        private_file::write_atomic(private_path, text.as_bytes(), true)?;
    } else {
        write_new(private_path, text.as_bytes())?;
    }
    Ok(private.get_public().to_base64())
}

/// Creates `path` with O_EXCL and mode 0600 at open time, writes `data`, fsyncs.
fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists already: refusing to overwrite a key (give --force to replace it; \
             the peer then needs the new public key)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
    };
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(e).with_context(|| format!("write {}", path.display()));
    }
    Ok(())
}

/// Reads the base64 private key in `path`. Refuses a file that group or others can access
/// (the check is on the opened file, not a second lookup of the path) and one that does
/// not hold a key; the error never quotes the file's content.
pub fn read_private_key(path: &Path) -> Result<Key> {
    let f = fs::File::open(path)
        .with_context(|| format!("open WireGuard private key {}", path.display()))?;
    let mode = f
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "WireGuard private key {} is accessible by group or others (mode {:04o}): \
             it must be private; run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    let mut text = String::new();
    f.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|_| not_a_key(path))?;
    Key::from_base64(text.trim()).map_err(|_| not_a_key(path))
}

fn not_a_key(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} does not hold a WireGuard private key (expected one line of 44 base64 characters, \
         as written by `bdr keygen` or `wg genkey`)",
        path.display()
    )
}

/// Parses a base64 WireGuard public key (as printed by `bdr keygen` or `wg pubkey`).
pub fn parse_public_key(s: &str) -> Result<Key> {
    let t = s.trim();
    Key::from_base64(t).map_err(|_| {
        let shown: String = t.chars().take(60).collect();
        let more = if t.chars().count() > 60 { "..." } else { "" };
        anyhow::anyhow!(
            "`{shown}{more}` is not a WireGuard public key: expected 32 bytes in base64 \
             (44 characters ending in `=`), as printed by `bdr keygen` or `wg pubkey`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn keygen_round_trip_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys/sub/wg.key");
        let public = keygen(&p, false).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        assert_eq!(mode(&d.path().join("keys")), 0o700);
        let private = read_private_key(&p).unwrap();
        assert_eq!(private.get_public().to_base64(), public);
        assert_eq!(parse_public_key(&public).unwrap(), private.get_public());
        // The file is what `wg genkey` writes: the base64 key and a newline.
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("{}\n", private.to_base64()));
    }

    #[test]
    fn public_key_matches_x25519_derivation() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private =
            Key::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let public =
            Key::from_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
                .unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap()
            .write_all(private.to_base64().as_bytes())
            .unwrap();
        assert_eq!(read_private_key(&p).unwrap().get_public(), public);
    }

    #[test]
    fn existing_file_refused_without_force() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wg.key");
        let first = keygen(&p, false).unwrap();
        let e = keygen(&p, false).unwrap_err().to_string();
        assert!(e.contains("exists already") && e.contains("--force"), "{e}");
        assert_eq!(
            read_private_key(&p).unwrap().get_public().to_base64(),
            first
        );

        // --force replaces it, and a loose old mode does not carry over.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let second = keygen(&p, true).unwrap();
        assert_ne!(first, second);
        assert_eq!(mode(&p), 0o600);
        assert_eq!(
            read_private_key(&p).unwrap().get_public().to_base64(),
            second
        );
    }

    #[test]
    fn readable_key_refused_with_chmod_hint() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wg.key");
        keygen(&p, false).unwrap();
        for m in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
            let e = read_private_key(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");
            assert!(e.contains(&format!("{m:04o}")), "{e}");
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        read_private_key(&p).unwrap();
    }

    #[test]
    fn malformed_keys_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wg.key");
        for bad in [
            &b""[..],
            b"not a key\n",
            b"AAAA\n",
            b"\xff\xfe binary",
            // 33 bytes of base64
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
        ] {
            let _ = fs::remove_file(&p);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .unwrap()
                .write_all(bad)
                .unwrap();
            let e = read_private_key(&p).unwrap_err().to_string();
            assert!(e.contains("does not hold a WireGuard private key"), "{e}");
        }
        let e = read_private_key(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");

        for bad in ["", "hello", "AAAA", &"A".repeat(200)] {
            let e = parse_public_key(bad).unwrap_err().to_string();
            assert!(e.contains("is not a WireGuard public key"), "{e}");
            assert!(e.len() < 300, "{e}");
        }
        let k = Key::generate_private().get_public();
        assert_eq!(
            parse_public_key(&format!(" {}\n", k.to_base64())).unwrap(),
            k
        );
    }
}
