//! The redo journal of one cut: header, chunk records, commit record.
//!
//! ```text
//! header (64 B):  "BDRJRNL2" | volume [16] | cut u64 | parent u64 (u64::MAX = none)
//!                 | dev_bytes u64 | region_bytes u32 | kind u32 (0 incr., 1 rescan) | 0 u64
//! chunk record:   "CHNK" | len u32 | offset u64 | blake3 [32] | data [len]
//! commit record:  "CMIT" | 0 u32 | cut u64 | chunks u64 | bytes u64 | digest [32]
//! ```
//! All integers little-endian. `digest` is the blake3 of the header and of every chunk
//! record's 48-byte head, in order; the head holds the blake3 of the record's data, so the
//! digest binds every data byte without hashing the data a second time. A journal is
//! *committed* iff its commit record is complete, its digest, cut, chunk count and byte
//! count match and every record's data matches its hash; anything else (torn tail, zeros of
//! the preallocated space, garbage) means "not committed". A version-1 journal
//! ("BDRJRNL1", left by an older bdr) differs only in that its digest covers the data too;
//! it is still read. See `docs/replica-journal.md`.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::frame::{CutKind, MAX_REGION_BYTES};

pub(crate) const JOURNAL_FILE: &str = "journal";
pub(crate) const HEADER_MAGIC: &[u8; 8] = b"BDRJRNL2";
/// Version 1: the digest also covers every data byte.
pub(crate) const HEADER_MAGIC_V1: &[u8; 8] = b"BDRJRNL1";
pub(crate) const HEADER_LEN: u64 = 64;
pub(crate) const CHUNK_TAG: &[u8; 4] = b"CHNK";
pub(crate) const CHUNK_HEADER_LEN: u64 = 48;
pub(crate) const COMMIT_TAG: &[u8; 4] = b"CMIT";
pub(crate) const COMMIT_LEN: u64 = 64;

/// What a journal is about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JournalHeader {
    pub volume: [u8; 16],
    pub cut: u64,
    pub parent: Option<u64>,
    pub dev_bytes: u64,
    pub region_bytes: u32,
    pub kind: CutKind,
}

impl JournalHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(HEADER_MAGIC);
        h[8..24].copy_from_slice(&self.volume);
        h[24..32].copy_from_slice(&self.cut.to_le_bytes());
        h[32..40].copy_from_slice(&self.parent.unwrap_or(u64::MAX).to_le_bytes());
        h[40..48].copy_from_slice(&self.dev_bytes.to_le_bytes());
        h[48..52].copy_from_slice(&self.region_bytes.to_le_bytes());
        let kind: u32 = match self.kind {
            CutKind::Incremental => 0,
            CutKind::Rescan => 1,
        };
        h[52..56].copy_from_slice(&kind.to_le_bytes());
        h
    }

    /// The header and the journal's version (1 or 2).
    fn decode(h: &[u8; HEADER_LEN as usize]) -> Result<(JournalHeader, u32), String> {
        let version = match &h[0..8] {
            m if m == HEADER_MAGIC => 2,
            m if m == HEADER_MAGIC_V1 => 1,
            _ => return Err("bad header magic".into()),
        };
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let kind = match u32_at(52) {
            0 => CutKind::Incremental,
            1 => CutKind::Rescan,
            k => return Err(format!("unknown cut kind {k}")),
        };
        let parent = u64_at(32);
        let header = JournalHeader {
            volume: h[8..24].try_into().unwrap(),
            cut: u64_at(24),
            parent: (parent != u64::MAX).then_some(parent),
            dev_bytes: u64_at(40),
            region_bytes: u32_at(48),
            kind,
        };
        Ok((header, version))
    }
}

/// Appends records to a new journal and keeps the running digest. Unbuffered: a chunk's
/// data goes to the file straight from the caller's buffer.
pub(crate) struct JournalWriter {
    pub(crate) file: File,
    hasher: blake3::Hasher,
    pub(crate) pos: u64,
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
}

impl JournalWriter {
    pub(crate) fn new(mut file: File, header: &JournalHeader) -> io::Result<JournalWriter> {
        let h = header.encode();
        file.write_all(&h)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&h);
        Ok(JournalWriter {
            file,
            hasher,
            pos: HEADER_LEN,
            chunks: 0,
            bytes: 0,
        })
    }

    pub(crate) fn append(&mut self, offset: u64, data: &[u8], hash: &[u8; 32]) -> io::Result<()> {
        let mut h = [0u8; CHUNK_HEADER_LEN as usize];
        h[0..4].copy_from_slice(CHUNK_TAG);
        h[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[16..48].copy_from_slice(hash);
        self.file.write_all(&h)?;
        self.file.write_all(data)?;
        self.hasher.update(&h);
        self.pos += CHUNK_HEADER_LEN + data.len() as u64;
        self.chunks += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Writes the commit record (after the records were synced; not synced itself).
    pub(crate) fn write_commit(&mut self, cut: u64) -> io::Result<()> {
        let digest = self.hasher.finalize();
        let mut c = [0u8; COMMIT_LEN as usize];
        c[0..4].copy_from_slice(COMMIT_TAG);
        c[8..16].copy_from_slice(&cut.to_le_bytes());
        c[16..24].copy_from_slice(&self.chunks.to_le_bytes());
        c[24..32].copy_from_slice(&self.bytes.to_le_bytes());
        c[32..64].copy_from_slice(digest.as_bytes());
        self.file.write_all(&c)?;
        self.pos += COMMIT_LEN;
        Ok(())
    }
}

/// A verified, committed journal.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct CommittedJournal {
    pub(crate) header: JournalHeader,
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
}

/// Why a journal is not committed (it is then discarded).
pub(crate) type NotCommitted = String;

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A chunk record's head after its tag: `len u32 | offset u64 | blake3 [32]`.
struct RecordHead {
    len: u32,
    offset: u64,
    hash: [u8; 32],
}

/// Parses a record head and checks it against the journal's header: a length within one
/// region, a range within the volume.
fn parse_head(
    rest: &[u8; CHUNK_HEADER_LEN as usize - 4],
    header: &JournalHeader,
) -> Result<RecordHead, NotCommitted> {
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap());
    let offset = u64::from_le_bytes(rest[4..12].try_into().unwrap());
    if len == 0 || len > header.region_bytes {
        return Err(format!("chunk record of bad length {len}"));
    }
    if offset
        .checked_add(len.into())
        .map_or(true, |e| e > header.dev_bytes)
    {
        return Err(format!("chunk record at {offset} past the volume end"));
    }
    Ok(RecordHead {
        len,
        offset,
        hash: rest[12..44].try_into().unwrap(),
    })
}

/// Iterates over the chunk records of a journal, checking each record's data against its
/// blake3: calls `each(data)` for each and returns the header and the commit
/// record, or why the records do not end in one.
fn walk(
    path: &Path,
    mut on_byte: impl FnMut(&[u8]),
    mut each: impl FnMut(&[u8]),
) -> io::Result<Result<(JournalHeader, [u8; COMMIT_LEN as usize]), NotCommitted>> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h = [0u8; HEADER_LEN as usize];
    if !read_full(&mut r, &mut h)? {
        return Ok(Err("journal shorter than its header".into()));
    }
    let (header, version) = match JournalHeader::decode(&h) {
        Ok(hv) => hv,
        Err(e) => return Ok(Err(e)),
    };
    if header.region_bytes == 0 || header.region_bytes > MAX_REGION_BYTES {
        return Ok(Err(format!("bad region size {}", header.region_bytes)));
    }
    on_byte(&h);
    let mut data = vec![0u8; header.region_bytes as usize];
    loop {
        let mut tag = [0u8; 4];
        if !read_full(&mut r, &mut tag)? {
            return Ok(Err("journal ends without a commit record".into()));
        }
        if &tag == COMMIT_TAG {
            let mut c = [0u8; COMMIT_LEN as usize];
            c[0..4].copy_from_slice(&tag);
            if !read_full(&mut r, &mut c[4..])? {
                return Ok(Err("torn commit record".into()));
            }
            return Ok(Ok((header, c)));
        }
        if &tag != CHUNK_TAG {
            return Ok(Err("records end without a commit record".into()));
        }
        let mut rest = [0u8; CHUNK_HEADER_LEN as usize - 4];
        if !read_full(&mut r, &mut rest)? {
            return Ok(Err("torn chunk record".into()));
        }
        let RecordHead { len, offset, hash } = match parse_head(&rest, &header) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let d = &mut data[..len as usize];
        if !read_full(&mut r, d)? {
            return Ok(Err("torn chunk data".into()));
        }
        if blake3::hash(d).as_bytes() != &hash {
            return Ok(Err(format!(
                "chunk record at {offset}: data does not match its hash"
            )));
        }
        on_byte(&tag);
        on_byte(&rest);
        if version == 1 {
            on_byte(d);
        }
        each(d);
    }
}

/// Reads and verifies a journal. `Ok(Err(reason))` if it is not committed.
pub(crate) fn verify(path: &Path) -> io::Result<Result<CommittedJournal, NotCommitted>> {
    let mut hasher = blake3::Hasher::new();
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    let walked = walk(
        path,
        |b| {
            hasher.update(b);
        },
        |d| {
            chunks += 1;
            bytes += d.len() as u64;
        },
    )?;
    let (header, c) = match walked {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let u64_at = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap());
    if c[4..8] != [0; 4] {
        return Ok(Err("bad commit record".into()));
    }
    if u64_at(8) != header.cut || u64_at(16) != chunks || u64_at(24) != bytes {
        return Ok(Err(format!(
            "commit record (cut {}, {} chunks, {} bytes) does not match the journal (cut {}, {chunks} chunks, {bytes} bytes)",
            u64_at(8),
            u64_at(16),
            u64_at(24),
            header.cut
        )));
    }
    if hasher.finalize().as_bytes() != &c[32..64] {
        return Ok(Err("commit record digest does not match the records".into()));
    }
    Ok(Ok(CommittedJournal {
        header,
        chunks,
        bytes,
    }))
}

/// Where a chunk record's data lies: `len` bytes at `pos` in the journal, for `offset` on
/// the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordData {
    pub(crate) offset: u64,
    pub(crate) pos: u64,
    pub(crate) len: u64,
}

/// Calls `each` for every chunk record of a journal known to be committed (see
/// [`verify`]), reading only the records' heads: the data stays in the file, for the
/// caller to copy in the kernel.
pub(crate) fn for_each_record(
    file: &File,
    mut each: impl FnMut(RecordData) -> io::Result<()>,
) -> io::Result<()> {
    let bad = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("committed journal became unreadable: {reason}"),
        )
    };
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0)?;
    let (header, _) = JournalHeader::decode(&h).map_err(bad)?;
    let mut pos = HEADER_LEN;
    loop {
        let mut head = [0u8; CHUNK_HEADER_LEN as usize];
        file.read_exact_at(&mut head, pos)?;
        if &head[0..4] == COMMIT_TAG {
            return Ok(());
        }
        if &head[0..4] != CHUNK_TAG {
            return Err(bad(format!("no record at {pos}")));
        }
        let h = parse_head(head[4..].try_into().unwrap(), &header).map_err(bad)?;
        let len = u64::from(h.len);
        pos += CHUNK_HEADER_LEN;
        each(RecordData {
            offset: h.offset,
            pos,
            len,
        })?;
        pos += len;
    }
}
