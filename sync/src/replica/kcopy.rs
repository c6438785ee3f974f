//! Copying a byte range from the journal to the device inside the kernel.
//!
//! A commit writes every chunk twice: into the journal, then onto the device. Reading the
//! journal back into user space and writing it out again costs two page-cache copies per
//! byte (plus a buffer's); `sendfile(2)` splices the journal's page-cache pages into the
//! device's write path, one copy. Where the kernel refuses (`EINVAL`, `ENOSYS`,
//! `EOPNOTSUPP`: a target without `splice_write`), the range is copied with `pread` and
//! `pwrite` instead, with the same result.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Copies `len` bytes at `src_off` of `src` to `dst` at `dst_off`. Moves `dst`'s file
/// position (sendfile writes at it); `src`'s is left alone. `buf` is the fallback's buffer,
/// kept by the caller across calls.
pub(crate) fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    match sendfile_range(src, src_off, dst, dst_off, len) {
        Ok(res) => res,
        Err(Unsupported) => pread_pwrite_range(src, src_off, dst, dst_off, len, buf),
    }
}

/// `sendfile` refused the pair before copying anything: use another way.
struct Unsupported;

fn sendfile_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> Result<io::Result<()>, Unsupported> {
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let Ok(dst_pos) = libc::off_t::try_from(dst_off) else {
        return Ok(Err(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    let Ok(mut src_pos) = libc::off_t::try_from(src_off) else {
        return Ok(Err(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    // SAFETY: lseek on a descriptor `dst` owns and keeps open for the call.
    if unsafe { libc::lseek(dfd, dst_pos, libc::SEEK_SET) } < 0 {
        return Ok(Err(io::Error::last_os_error()));
    }
    let mut left = len;
    while left > 0 {
        // One call moves at most 0x7ffff000 bytes (the kernel's MAX_RW_COUNT).
        let want = left.min(0x7fff_f000) as usize;
        // SAFETY: both descriptors are owned by live `File`s for the duration of the call,
        // and `src_pos` is a valid, exclusively borrowed off_t the kernel updates.
        let n = unsafe { libc::sendfile(dfd, sfd, &mut src_pos, want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) if left == len => {
                    return Err(Unsupported)
                }
                _ => return Ok(Err(e)),
            }
        }
        if n == 0 {
            return Ok(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("source ends {left} bytes short of the range"),
            )));
        }
        left -= n as u64;
    }
    Ok(Ok(()))
}

fn pread_pwrite_range(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    const STEP: u64 = 1 << 20;
    let mut left = len;
    while left > 0 {
        let n = left.min(STEP) as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        src.read_exact_at(&mut buf[..n], src_off)?;
        dst.write_all_at(&buf[..n], dst_off)?;
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    /// One suite for both ways of copying: unaligned ranges, ranges longer than a pipe
    /// (64 KiB) and than the fallback's step (1 MiB), and a source that ends too soon.
    fn suite(mut copy: impl FnMut(&File, u64, &File, u64, u64) -> io::Result<()>) {
        let mut src = tempfile::tempfile().unwrap();
        let data = pattern(3 << 20, 7);
        src.write_all(&data).unwrap();
        let dst = tempfile::tempfile().unwrap();
        dst.set_len(4 << 20).unwrap();
        let mut want = vec![0u8; 4 << 20];
        for &(so, doff, len) in &[
            (0u64, 0u64, 4096u64),
            (48, 65536, 65536),
            (4144, 1 << 20, 200_000),
            (1, (2 << 20) + 3, (1 << 20) + 4097),
            (5000, 12345, 0),
        ] {
            copy(&src, so, &dst, doff, len).unwrap();
            want[doff as usize..(doff + len) as usize]
                .copy_from_slice(&data[so as usize..(so + len) as usize]);
        }
        let mut got = vec![0u8; 4 << 20];
        dst.read_exact_at(&mut got, 0).unwrap();
        assert!(got == want, "destination differs from the copied ranges");
        let e = copy(&src, (3 << 20) - 100, &dst, 0, 200).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn sendfile_copies_ranges() {
        suite(
            |s, so, d, doff, len| match sendfile_range(s, so, d, doff, len) {
                Ok(r) => r,
                Err(Unsupported) => panic!("sendfile refused a file-to-file copy"),
            },
        );
    }

    #[test]
    fn fallback_copies_ranges() {
        let mut buf = Vec::new();
        suite(|s, so, d, doff, len| pread_pwrite_range(s, so, d, doff, len, &mut buf));
    }

    #[test]
    fn copy_range_copies_ranges() {
        let mut buf = Vec::new();
        suite(|s, so, d, doff, len| copy_range(s, so, d, doff, len, &mut buf));
    }
}
