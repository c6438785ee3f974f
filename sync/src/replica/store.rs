//! [`ReplicaStore`]: the replica device, its state file and its redo journal.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bdr_bitmap::Geometry;

use super::journal::{self, JournalWriter, CHUNK_HEADER_LEN, COMMIT_LEN, HEADER_LEN, JOURNAL_FILE};
use super::kcopy;
use super::state::{read_state, sync_dir, volume_hex, write_state, ReplicaState, STATE_TMP};
use super::{CommitStep, StoreError};

pub use super::journal::JournalHeader as CutHeader;

const LOCK_FILE: &str = "lock";

/// What [`ReplicaStore::open`] found in the state dir.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RecoveryReport {
    /// No journal: the last commit finished.
    Clean,
    /// A committed journal was replayed onto the device: the replica is at `cut`.
    Replayed { cut: u64, chunks: u64, bytes: u64 },
    /// A journal without a valid commit record was discarded: the replica stays at its
    /// last committed cut.
    Discarded { reason: String },
}

/// The result of a commit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitReport {
    pub cut: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The first cut of a new replica, written straight to the device: there is no committed
/// cut to protect yet, so no journal (which would need as much space as the device).
struct SeedCut {
    header: CutHeader,
    chunks: u64,
    bytes: u64,
}

struct OpenCut {
    header: CutHeader,
    writer: JournalWriter,
    /// Journal bytes the cut was estimated to need (for the NoSpace message).
    needed: u64,
}

/// The replica's device plus its state dir. Single-threaded; one per state dir (a lock
/// file enforces it).
pub struct ReplicaStore {
    device: File,
    device_path: PathBuf,
    device_bytes: u64,
    dir: PathBuf,
    _lock: File,
    state: Option<ReplicaState>,
    open_cut: Option<OpenCut>,
    seed: Option<SeedCut>,
    recovery: RecoveryReport,
    crash_at: Option<CommitStep>,
    /// Called at each commit step (tests only: something else happening right there).
    step_hook: Option<StepHook>,
    dead: Option<String>,
    /// After a failed [`retry_recovery`](Self::retry_recovery): no new attempt before the
    /// instant, and the wait that led to it.
    retry: Option<(Instant, Duration)>,
}

/// The first wait between two recoveries of a stopped store.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two recoveries of a stopped store.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// See [`ReplicaStore::set_step_hook`].
/// Returns `true` to fail the step there, as an armed crash point would.
pub type StepHook = Box<dyn FnMut(CommitStep) -> bool + Send>;

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("device", &self.device_path)
            .field("device_bytes", &self.device_bytes)
            .field("dir", &self.dir)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn open_device(path: &Path) -> Result<(File, u64), StoreError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(format!("open replica device {}", path.display()), e))?;
    // Works for block devices too, whose metadata length is 0.
    let len = f
        .seek(SeekFrom::End(0))
        .map_err(|e| StoreError::io(format!("size of {}", path.display()), e))?;
    Ok((f, len))
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    // A child process forked by this process (or a previous holder's) keeps a copy of the
    // lock's descriptor until it execs: retry for a moment before calling the dir busy.
    for attempt in 0.. {
        // SAFETY: flock on a valid descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::io(format!("lock {}", path.display()), e));
        }
        if attempt == 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StoreError::Locked {
        dir: dir.to_path_buf(),
    })
}

/// Reserves `len` bytes for `f`; `Ok` also when the file system cannot preallocate.
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: posix_fallocate on a valid descriptor we own.
    match unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) } {
        0 | libc::EOPNOTSUPP | libc::ENOSYS => Ok(()),
        #[allow(unreachable_patterns)] // EOPNOTSUPP == ENOTSUP on Linux
        libc::ENOTSUP => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Space [`reserve_state`] holds for the next state file (its text is under 300 bytes).
const STATE_RESERVE: u64 = 4096;

/// Creates the temporary state file of `dir` with [`STATE_RESERVE`] bytes allocated, so the
/// commit's `write_state` needs no new space. Invariant: a cut is only begun once this
/// succeeded, so once its journal is committed nothing else that fills the state dir (a log,
/// another process racing for the blocks the commit frees) can make the commit fail.
fn reserve_state(dir: &Path) -> io::Result<()> {
    let tmp = dir.join(STATE_TMP);
    let res = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&tmp)
        .and_then(|f| preallocate(&f, STATE_RESERVE));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

impl ReplicaStore {
    /// Opens the replica device (read-write) and the state dir (created 0700 if missing),
    /// locks the state dir, and recovers: a committed journal is replayed onto the device,
    /// an uncommitted one discarded. Afterwards the device holds exactly the last
    /// committed cut.
    pub fn open(device: &Path, state_dir: &Path) -> Result<ReplicaStore, StoreError> {
        Self::open_inner(device, state_dir, None)
    }

    /// [`open`](Self::open) with a crash point armed during recovery (tests only).
    #[doc(hidden)]
    pub fn open_with_crash_point(
        device: &Path,
        state_dir: &Path,
        step: CommitStep,
    ) -> Result<ReplicaStore, StoreError> {
        Self::open_inner(device, state_dir, Some(step))
    }

    fn open_inner(
        device: &Path,
        state_dir: &Path,
        crash_at: Option<CommitStep>,
    ) -> Result<ReplicaStore, StoreError> {
        if !state_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| {
                    StoreError::io(format!("create state dir {}", state_dir.display()), e)
                })?;
        }
        let lock = lock_dir(state_dir)?;
        let _ = fs::remove_file(state_dir.join(STATE_TMP));
        let st = read_state(state_dir)?;
        let (dev, device_bytes) = open_device(device)?;
        let mut store = ReplicaStore {
            device: dev,
            device_path: device.to_path_buf(),
            device_bytes,
            dir: state_dir.to_path_buf(),
            _lock: lock,
            state: st,
            open_cut: None,
            seed: None,
            recovery: RecoveryReport::Clean,
            crash_at,
            step_hook: None,
            dead: None,
            retry: None,
        };
        store.recovery = store.recover()?;
        Ok(store)
    }

    /// Arms a crash point: when the commit reaches `step`, the store stops as if the process
    /// died there (files are left as they are) and every
    /// later call fails. Tests only; never set in production.
    #[doc(hidden)]
    pub fn set_crash_point(&mut self, step: Option<CommitStep>) {
        self.crash_at = step;
    }

    /// Calls `hook` at every commit step, before the crash point is checked: lets a test
    /// act in the middle of a commit (fill the state dir, say), or fail the step (the hook
    /// returns `true`) for as long as it likes. Tests only.
    #[doc(hidden)]
    pub fn set_step_hook(&mut self, hook: Option<StepHook>) {
        self.step_hook = hook;
    }

    /// The committed state; `None` for a new replica that has committed no cut yet.
    pub fn state(&self) -> Option<&ReplicaState> {
        self.state.as_ref()
    }

    /// Size of the replica device in bytes.
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    pub fn device_path(&self) -> &Path {
        &self.device_path
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery did at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Whether a cut is being received.
    pub fn in_cut(&self) -> Option<u64> {
        self.open_cut
            .as_ref()
            .map(|c| c.header.cut)
            .or(self.seed.as_ref().map(|c| c.header.cut))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn check_alive(&self) -> Result<(), StoreError> {
        match &self.dead {
            Some(why) => Err(StoreError::Dead(why.clone())),
            None => Ok(()),
        }
    }

    /// If `step` is the armed crash point: die there.
    fn step(&mut self, step: CommitStep) -> Result<(), StoreError> {
        let hooked = self.step_hook.as_mut().is_some_and(|hook| hook(step));
        if !hooked && self.crash_at != Some(step) {
            return Ok(());
        }
        self.dead = Some(format!("injected crash after {step:?}"));
        self.seed = None;
        // The journal is written unbuffered: what was appended is in the file, as after
        // a real crash before any sync (which may or may not have kept it).
        self.open_cut = None;
        Err(StoreError::Crashed(step))
    }

    /// Whether a failed commit stopped the store (every call fails until a recovery).
    pub fn is_stopped(&self) -> bool {
        self.dead.is_some()
    }

    /// Why the store is stopped, if it is.
    pub fn stopped_reason(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// Runs the recovery of [`open`](Self::open) again on a store a failed commit stopped
    /// (the replica device erred, say, and came back): the committed journal is replayed
    /// whole — the writes whose write-back failed may be gone from the page cache, so
    /// nothing short of rewriting them is trusted — and the store serves again. On failure
    /// the store stays stopped, with the new reason. A store that is not stopped is left
    /// as it is.
    ///
    /// Retries are spaced out: after a failed one, calls within [`RETRY_FIRST`] (doubling
    /// at each failure up to [`RETRY_MAX`]) fail at once with the last reason, so a device
    /// that keeps failing is not rewritten from the journal at every reconnection.
    pub fn retry_recovery(&mut self) -> Result<RecoveryReport, StoreError> {
        let Some(why) = &self.dead else {
            return Ok(self.recovery.clone());
        };
        if self.retry.is_some_and(|(at, _)| Instant::now() < at) {
            return Err(StoreError::Dead(why.clone()));
        }
        self.open_cut = None;
        self.seed = None;
        let res = read_state(&self.dir).and_then(|st| {
            self.state = st;
            self.recover()
        });
        match res {
            Ok(r) => {
                self.dead = None;
                self.retry = None;
                self.recovery = r.clone();
                Ok(r)
            }
            Err(e) => {
                self.dead = Some(e.to_string());
                let wait = self
                    .retry
                    .map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
                self.retry = Some((Instant::now() + wait, wait));
                Err(e)
            }
        }
    }

    fn recover(&mut self) -> Result<RecoveryReport, StoreError> {
        let path = self.journal_path();
        if !path.exists() {
            return Ok(RecoveryReport::Clean);
        }
        let verified = journal::verify(&path)
            .map_err(|e| StoreError::io(format!("read journal {}", path.display()), e))?;
        let cj = match verified {
            Err(reason) => {
                tracing::warn!(journal = %path.display(), %reason, "discarding uncommitted journal");
                self.remove_journal()?;
                return Ok(RecoveryReport::Discarded { reason });
            }
            Ok(cj) => cj,
        };
        if let Some(st) = &self.state {
            if st.volume != cj.header.volume {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!(
                        "committed journal of volume {} but the state file says volume {}",
                        volume_hex(&cj.header.volume),
                        volume_hex(&st.volume)
                    ),
                });
            }
            if cj.header.cut < st.last_cut {
                let reason = format!(
                    "committed journal of cut {} is older than the last committed cut {}",
                    cj.header.cut, st.last_cut
                );
                tracing::warn!(journal = %path.display(), %reason, "discarding stale journal");
                self.remove_journal()?;
                return Ok(RecoveryReport::Discarded { reason });
            }
        }
        if cj.header.dev_bytes > self.device_bytes {
            return Err(StoreError::Usage(format!(
                "journal {} needs a device of {} bytes but {} has {}",
                path.display(),
                cj.header.dev_bytes,
                self.device_path.display(),
                self.device_bytes
            )));
        }
        tracing::info!(
            cut = cj.header.cut,
            chunks = cj.chunks,
            "replaying committed journal"
        );
        self.apply_committed(&cj.header)?;
        Ok(RecoveryReport::Replayed {
            cut: cj.header.cut,
            chunks: cj.chunks,
            bytes: cj.bytes,
        })
    }

    fn remove_journal(&self) -> Result<(), StoreError> {
        let path = self.journal_path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("remove {}", path.display()), e)),
        }
        sync_dir(&self.dir)
    }

    /// Redo: writes every chunk of the committed journal to the device, syncs it, makes the
    /// cut the committed one in the state file and removes the journal. Idempotent.
    fn apply_committed(&mut self, header: &CutHeader) -> Result<(), StoreError> {
        let path = self.journal_path();
        let mut k = 0u64;
        let mut crashed = None;
        let crash_at = self.crash_at;
        let dev = &self.device;
        let mut buf = Vec::new();
        let res = File::open(&path).and_then(|jf| {
            journal::for_each_record(&jf, |r| {
                kcopy::copy_range(&jf, r.pos, dev, r.offset, r.len, &mut buf)?;
                if crash_at == Some(CommitStep::DeviceWrite(k)) {
                    crashed = Some(CommitStep::DeviceWrite(k));
                    return Err(io::Error::other("injected crash"));
                }
                k += 1;
                Ok(())
            })
        });
        if let Some(s) = crashed {
            return self.step(s);
        }
        res.map_err(|e| {
            StoreError::io(
                format!("replay journal onto {}", self.device_path.display()),
                e,
            )
        })?;
        self.device
            .sync_data()
            .map_err(|e| StoreError::io(format!("fdatasync {}", self.device_path.display()), e))?;
        self.step(CommitStep::DeviceSynced)?;
        let st = ReplicaState {
            volume: header.volume,
            last_cut: header.cut,
            dev_bytes: header.dev_bytes,
            region_bytes: header.region_bytes,
            committed_at: SystemTime::now(),
        };
        write_state(&self.dir, &st)?;
        self.state = Some(st);
        self.step(CommitStep::StateUpdated)?;
        self.remove_journal()?;
        self.step(CommitStep::JournalRemoved)?;
        Ok(())
    }

    /// Starts receiving a cut: reserves the space of the next state file (see
    /// [`reserve_state`]) and creates the journal, preallocating `needed` bytes of chunk
    /// records (plus header and commit record). A state dir without that much space fails
    /// here with [`StoreError::NoSpace`], before any data is shipped.
    pub fn begin_cut(&mut self, header: CutHeader, needed: u64) -> Result<(), StoreError> {
        self.check_alive()?;
        self.abort_cut();
        if header.dev_bytes > self.device_bytes {
            return Err(StoreError::Usage(format!(
                "cut of a {}-byte volume does not fit the {}-byte device {}",
                header.dev_bytes,
                self.device_bytes,
                self.device_path.display()
            )));
        }
        if let Err(e) = reserve_state(&self.dir) {
            return Err(StoreError::from_io_in_dir(
                format!("reserve {}", self.dir.join(STATE_TMP).display()),
                &self.dir,
                STATE_RESERVE + if self.state.is_some() { needed } else { 0 },
                e,
            ));
        }
        if self.state.is_none() {
            // A new replica: seed straight onto the device (see SeedCut).
            self.remove_journal()?;
            self.seed = Some(SeedCut {
                header,
                chunks: 0,
                bytes: 0,
            });
            return Ok(());
        }
        let path = self.journal_path();
        let total = HEADER_LEN + needed + COMMIT_LEN;
        let res = (|| -> io::Result<JournalWriter> {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            preallocate(&f, total)?;
            let w = JournalWriter::new(f, &header)?;
            w.file.sync_data()?;
            Ok(w)
        })();
        let writer = match res {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(StoreError::from_io_in_dir(
                    format!("create journal {}", path.display()),
                    &self.dir,
                    total,
                    e,
                ));
            }
        };
        sync_dir(&self.dir)?;
        self.open_cut = Some(OpenCut {
            header,
            writer,
            needed: total,
        });
        Ok(())
    }

    /// Reserves `more` bytes of chunk records in the open cut's journal, for a later pass
    /// of the cut (pre-copy). Fails with [`StoreError::NoSpace`] (and discards the cut) if
    /// the state dir cannot hold them. Nothing to do for a seed (no journal).
    pub fn grow_cut(&mut self, more: u64) -> Result<(), StoreError> {
        self.check_alive()?;
        if self.seed.is_some() {
            return Ok(());
        }
        let oc = self
            .open_cut
            .as_mut()
            .ok_or_else(|| StoreError::Usage("grow_cut without begin_cut".into()))?;
        let total = oc.needed.saturating_add(more);
        let res = preallocate(&oc.writer.file, total);
        oc.needed = total;
        if let Err(e) = res {
            return Err(self.fail_cut("grow", e));
        }
        Ok(())
    }

    /// Appends a verified, decompressed chunk to the open cut's journal.
    pub fn append_chunk(
        &mut self,
        offset: u64,
        data: &[u8],
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        self.check_alive()?;
        if let Some(sc) = self.seed.as_mut() {
            let end = offset.checked_add(data.len() as u64);
            if data.is_empty() || end.map_or(true, |e| e > sc.header.dev_bytes) {
                return Err(StoreError::Usage(format!(
                    "chunk of {} bytes at {offset} is outside the volume",
                    data.len()
                )));
            }
            self.device.write_all_at(data, offset).map_err(|e| {
                StoreError::io(
                    format!("write {} at {offset}", self.device_path.display()),
                    e,
                )
            })?;
            let k = sc.chunks;
            sc.chunks += 1;
            sc.bytes += data.len() as u64;
            return self.step(CommitStep::DeviceWrite(k));
        }
        let oc = self
            .open_cut
            .as_mut()
            .ok_or_else(|| StoreError::Usage("append_chunk without begin_cut".into()))?;
        let end = offset.checked_add(data.len() as u64);
        if data.is_empty() || end.map_or(true, |e| e > oc.header.dev_bytes) {
            return Err(StoreError::Usage(format!(
                "chunk of {} bytes at {offset} is outside the volume",
                data.len()
            )));
        }
        if let Err(e) = oc.writer.append(offset, data, hash) {
            return Err(self.fail_cut("append to the journal", e));
        }
        let k = oc.writer.chunks - 1;
        self.step(CommitStep::JournalAppend(k))
    }

    /// Journal error before the commit record: discard the cut, committed state untouched.
    fn fail_cut(&mut self, what: &str, e: io::Error) -> StoreError {
        let needed = self.open_cut.as_ref().map_or(0, |c| c.needed);
        self.abort_cut();
        StoreError::from_io_in_dir(
            format!("{what} {}", self.journal_path().display()),
            &self.dir,
            needed,
            e,
        )
    }

    /// Drops the open cut, if any, and its journal. The committed state is untouched.
    pub fn abort_cut(&mut self) {
        if let Some(sc) = self.seed.take() {
            tracing::info!(
                cut = sc.header.cut,
                "seed cut discarded (the replica stays new)"
            );
        }
        if let Some(oc) = self.open_cut.take() {
            let _ = fs::remove_file(self.journal_path());
            tracing::info!(cut = oc.header.cut, "cut discarded");
        }
    }

    /// Commits the open cut atomically: sync the journal, write and sync the commit record
    /// (the commit point), write the chunks to the device, sync it, update the state file,
    /// remove the journal. A crash at any instant leaves the device, after recovery at the
    /// next [`open`](Self::open), at exactly the previous cut or this one.
    pub fn commit_cut(&mut self, cut: u64) -> Result<CommitReport, StoreError> {
        self.check_alive()?;
        let t0 = Instant::now();
        if let Some(sc) = self.seed.as_ref() {
            if sc.header.cut != cut {
                return Err(StoreError::Usage(format!(
                    "commit of cut {cut} but cut {} is open",
                    sc.header.cut
                )));
            }
            let (header, chunks, bytes) = (sc.header.clone(), sc.chunks, sc.bytes);
            self.device.sync_data().map_err(|e| {
                StoreError::io(format!("fdatasync {}", self.device_path.display()), e)
            })?;
            self.step(CommitStep::DeviceSynced)?;
            self.seed = None;
            let st = ReplicaState {
                volume: header.volume,
                last_cut: header.cut,
                dev_bytes: header.dev_bytes,
                region_bytes: header.region_bytes,
                committed_at: SystemTime::now(),
            };
            write_state(&self.dir, &st)?;
            self.state = Some(st);
            self.step(CommitStep::StateUpdated)?;
            return Ok(CommitReport {
                cut,
                chunks,
                bytes,
                elapsed: t0.elapsed(),
            });
        }
        let oc = self
            .open_cut
            .as_mut()
            .ok_or_else(|| StoreError::Usage("commit_cut without begin_cut".into()))?;
        if oc.header.cut != cut {
            return Err(StoreError::Usage(format!(
                "commit of cut {cut} but cut {} is open",
                oc.header.cut
            )));
        }
        let (chunks, bytes) = (oc.writer.chunks, oc.writer.bytes);
        if let Err(e) = oc.writer.file.sync_data() {
            return Err(self.fail_cut("sync", e));
        }
        self.step(CommitStep::JournalSynced)?;
        let oc = self.open_cut.as_mut().expect("open cut");
        let res = oc.writer.write_commit(cut).and_then(|_| {
            let f = &oc.writer.file;
            f.set_len(oc.writer.pos)?;
            f.sync_all()
        });
        if let Err(e) = res {
            return Err(self.fail_cut("write the commit record to", e));
        }
        let header = oc.header.clone();
        self.step(CommitStep::CommitRecord)?;
        // The cut is durable. Anything failing from here on leaves a committed journal that
        // the next open replays: stop accepting work until then.
        self.open_cut = None;
        if let Err(e) = self.apply_committed(&header) {
            if self.dead.is_none() {
                self.dead = Some(e.to_string());
            }
            return Err(e);
        }
        Ok(CommitReport {
            cut,
            chunks,
            bytes,
            elapsed: t0.elapsed(),
        })
    }

    /// blake3 of the committed content of regions `first .. first + count` of geometry
    /// `g`, each clipped at `g`'s device end.
    pub fn hash_regions(
        &self,
        g: &Geometry,
        first: u64,
        count: u32,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.check_alive()?;
        if first.saturating_add(count.into()) > g.nr_regions || g.dev_bytes() > self.device_bytes {
            return Err(StoreError::Usage(format!(
                "regions {first}..{} are outside the volume ({} regions)",
                first.saturating_add(count.into()),
                g.nr_regions
            )));
        }
        let mut buf = vec![0u8; g.region_bytes() as usize];
        let mut out = Vec::with_capacity(count as usize);
        for r in first..first + u64::from(count) {
            let range = g.region_byte_range(r);
            let b = &mut buf[..(range.end - range.start) as usize];
            self.device.read_exact_at(b, range.start).map_err(|e| {
                StoreError::io(
                    format!("read {} at {}", self.device_path.display(), range.start),
                    e,
                )
            })?;
            out.push(*blake3::hash(b).as_bytes());
        }
        Ok(out)
    }

    /// Bytes of journal a cut of `chunks` chunks of at most `region_bytes` bytes needs.
    pub fn journal_bytes_for(chunks: u64, region_bytes: u32) -> u64 {
        chunks.saturating_mul(CHUNK_HEADER_LEN + u64::from(region_bytes))
    }
}
