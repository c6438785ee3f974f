//! The replica's session state machine and store, driven frame by frame on real files:
//! refusals, journal recovery, crash at every commit step, disk full, file modes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bdr_sync::frame::{Codec, CutKind, ErrorCode, Frame};
use bdr_sync::replica::{CommitStep, RecoveryReport, ReplicaSession, ReplicaStore, StoreError};
use bdr_sync::RoaringBitmap;
use common::*;

fn open(fx: &Fixture) -> ReplicaStore {
    ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap()
}

/// Feeds frames; returns the replies of the last one, or the first error.
fn feed(
    s: &mut ReplicaSession,
    frames: Vec<Frame>,
) -> Result<Vec<Frame>, bdr_sync::replica::SessionError> {
    let mut last = vec![];
    for f in frames {
        last = s.on_frame(f)?;
    }
    Ok(last)
}

/// A replica that committed a full rescan of the source as cut 1.
fn seeded(fx: &Fixture, rng: &mut Rng) -> ReplicaSession {
    fx.create(rng, 0);
    let mut s = ReplicaSession::new(open(fx));
    let w = s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    assert_eq!(
        w,
        vec![Frame::Welcome {
            proto: bdr_sync::PROTO_VERSION,
            volume: None,
            last_cut: None,
            dev_bytes: fx.g.dev_bytes()
        }]
    );
    let src = fx.source_bytes();
    let r = feed(
        &mut s,
        cut_frames(&src, &fx.g, &all_regions(&fx.g), 1, None, CutKind::Rescan),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 1 }]);
    assert_same(&fx.device_bytes(), &src, "after the seed");
    s
}

fn err_code(r: Result<Vec<Frame>, bdr_sync::replica::SessionError>) -> (ErrorCode, String) {
    let e = r.expect_err("expected a refusal");
    (e.code, e.message)
}

#[test]
fn seed_then_incremental_cuts_and_state_file() {
    let fx = Fixture::new(16);
    let mut rng = Rng(1);
    let mut s = seeded(&fx, &mut rng);
    for cut in 2..5 {
        let set = scribble(&fx.source(), &fx.g, &mut rng, 5);
        let src = fx.source_bytes();
        let r = feed(
            &mut s,
            cut_frames(&src, &fx.g, &set, cut, Some(cut - 1), CutKind::Incremental),
        );
        assert_eq!(r.unwrap(), vec![Frame::Committed { cut }]);
        assert_same(&fx.device_bytes(), &src, &format!("after cut {cut}"));
        assert_eq!(s.store().state().unwrap().last_cut, cut);
    }
    let st_path = fx.state_dir().join("state");
    let mode = fs::metadata(&st_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&st_path).unwrap();
    assert!(text.contains("last_cut 4\n"), "{text}");
    assert!(!fx.state_dir().join("journal").exists());
    drop(s);
    // Reopen: clean, same state.
    let st = open(&fx);
    assert_eq!(st.recovery(), &RecoveryReport::Clean);
    assert_eq!(st.state().unwrap().last_cut, 4);
    assert_eq!(st.state().unwrap().volume, VOLUME);
}

#[test]
fn state_file_readable_by_others_is_refused() {
    let fx = Fixture::new(4);
    let mut rng = Rng(2);
    drop(seeded(&fx, &mut rng));
    let p = fx.state_dir().join("state");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let e = ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap_err();
    assert!(matches!(e, StoreError::Insecure { mode: 0o644, .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    open(&fx);
}

#[test]
fn corrupt_state_file_is_refused() {
    let fx = Fixture::new(4);
    let mut rng = Rng(3);
    drop(seeded(&fx, &mut rng));
    let p = fx.state_dir().join("state");
    let t = fs::read_to_string(&p)
        .unwrap()
        .replace("last_cut 1", "last_cut 9");
    fs::write(&p, t).unwrap();
    let e = ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}

#[test]
fn second_store_on_the_same_state_dir_is_refused() {
    let fx = Fixture::new(4);
    fx.create(&mut Rng(4), 0);
    let _a = open(&fx);
    let e = ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
}

#[test]
fn wrong_volume() {
    let fx = Fixture::new(4);
    let mut rng = Rng(5);
    drop(seeded(&fx, &mut rng));
    let mut s = ReplicaSession::new(open(&fx));
    let (code, msg) = err_code(s.on_frame(hello(&fx.g, OTHER_VOLUME)));
    assert_eq!(code, ErrorCode::WrongVolume);
    assert!(msg.contains("wipe --state-dir"), "{msg}");
    assert!(
        msg.contains(&bdr_sync::replica::volume_hex(&VOLUME)),
        "{msg}"
    );
    assert!(s.failed());
    // Anything after a failure is refused too.
    assert!(s.on_frame(hello(&fx.g, VOLUME)).is_err());
}

#[test]
fn device_too_small() {
    let fx = Fixture::new(4);
    fx.create(&mut Rng(6), -512);
    let mut s = ReplicaSession::new(open(&fx));
    let (code, msg) = err_code(s.on_frame(hello(&fx.g, VOLUME)));
    assert_eq!(code, ErrorCode::DeviceTooSmall);
    assert!(msg.contains("at least"), "{msg}");
}

#[test]
fn wrong_parent_and_new_replica_needs_rescan() {
    let fx = Fixture::new(4);
    let mut rng = Rng(7);
    fx.create(&mut rng, 0);
    let src = fx.source_bytes();
    let set: RoaringBitmap = [1u32].into_iter().collect();
    // New replica: incremental refused.
    let mut s = ReplicaSession::new(open(&fx));
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let (code, msg) = err_code(feed(
        &mut s,
        cut_frames(&src, &fx.g, &set, 1, None, CutKind::Incremental),
    ));
    assert_eq!(code, ErrorCode::WrongParent);
    assert!(msg.contains("must be a rescan"), "{msg}");
    drop(s);

    let mut s = seeded(&fx, &mut rng);
    // Parent 5 while the replica is at 1.
    let (code, msg) = err_code(feed(
        &mut s,
        cut_frames(&src, &fx.g, &set, 6, Some(5), CutKind::Incremental),
    ));
    assert_eq!(code, ErrorCode::WrongParent);
    assert!(msg.contains("last committed cut is 1"), "{msg}");
    drop(s);
    // A rescan is accepted whatever the parent; a cut id not newer is not.
    let mut s = ReplicaSession::new(open(&fx));
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let (code, _) = err_code(feed(
        &mut s,
        cut_frames(&src, &fx.g, &set, 1, Some(0), CutKind::Rescan),
    ));
    assert_eq!(code, ErrorCode::WrongParent);
    let mut s = ReplicaSession::new(s.into_store());
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let r = feed(
        &mut s,
        cut_frames(&src, &fx.g, &set, 9, Some(3), CutKind::Rescan),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 9 }]);
}

/// Runs a session through Hello and CutBegin of cut 2 over region set `set`.
fn in_cut(fx: &Fixture, rng: &mut Rng, set: &RoaringBitmap) -> (ReplicaSession, Vec<Frame>) {
    let mut s = seeded(fx, rng);
    scribble(&fx.source(), &fx.g, rng, 10);
    let frames = cut_frames(
        &fx.source_bytes(),
        &fx.g,
        set,
        2,
        Some(1),
        CutKind::Incremental,
    );
    s.on_frame(frames[0].clone()).unwrap();
    (s, frames)
}

/// After a refused cut: the replica is still exactly at cut 1 and accepts cut 2 again.
fn assert_still_at_cut_1(fx: &Fixture, s: ReplicaSession, cut1: &[u8]) {
    assert!(s.failed());
    let store = s.into_store();
    assert_eq!(store.state().unwrap().last_cut, 1);
    assert!(
        !fx.state_dir().join("journal").exists(),
        "journal left behind"
    );
    assert_same(&fx.device_bytes(), cut1, "after the refused cut");
    drop(store);
    let store = open(fx);
    assert_eq!(store.recovery(), &RecoveryReport::Clean);
    assert_same(&fx.device_bytes(), cut1, "after reopening");
}

#[test]
fn chunk_outside_the_device_or_the_cut() {
    let fx = Fixture::new(8);
    let mut rng = Rng(8);
    let set: RoaringBitmap = [2u32, 3].into_iter().collect();
    for (offset, len, what) in [
        (fx.g.dev_bytes() + 65536 * 3, 65536, "outside"), // past the end
        (8 * 65536, 65536, "outside"),                    // tail region, wrong length
        (4 * 65536, 65536, "not in cut"),                 // not in the set
        (2 * 65536 + 512, 65536, "region boundary"),      // misaligned
    ] {
        let (mut s, _) = in_cut(&fx, &mut rng, &set);
        let cut1 = fx.device_bytes();
        let data = vec![5u8; len as usize];
        let r = s.on_frame(Frame::Chunk {
            offset,
            len,
            hash: *blake3::hash(&data).as_bytes(),
            codec: Codec::Raw,
            data,
        });
        let (code, msg) = err_code(r);
        assert!(
            matches!(code, ErrorCode::OutOfRange | ErrorCode::BadFrame),
            "{code} {msg}"
        );
        let _ = what;
        assert_still_at_cut_1(&fx, s, &cut1);
        let _ = fs::remove_dir_all(fx.state_dir());
    }
    // Region set naming a region past the end.
    let (mut s, _) = in_cut(&fx, &mut rng, &set);
    s.abort();
    let mut s = ReplicaSession::new(s.into_store());
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let bad: RoaringBitmap = [2u32, 9].into_iter().collect();
    let mut regions = vec![];
    bad.serialize_into(&mut regions).unwrap();
    let (code, _) = err_code(s.on_frame(Frame::CutBegin {
        cut: 2,
        parent: Some(1),
        kind: CutKind::Incremental,
        regions,
    }));
    assert_eq!(code, ErrorCode::OutOfRange);
    let (code, _) = {
        let mut s = ReplicaSession::new(s.into_store());
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        err_code(s.on_frame(Frame::CutBegin {
            cut: 2,
            parent: Some(1),
            kind: CutKind::Incremental,
            regions: vec![1, 2, 3, 4, 5],
        }))
    };
    assert_eq!(code, ErrorCode::BadFrame);
}

#[test]
fn hash_mismatch_discards_the_cut() {
    let fx = Fixture::new(8);
    let mut rng = Rng(9);
    let set: RoaringBitmap = [1u32, 2, 5].into_iter().collect();
    let (mut s, frames) = in_cut(&fx, &mut rng, &set);
    let cut1 = fx.device_bytes();
    s.on_frame(frames[1].clone()).unwrap();
    // Tamper with the second chunk: flip a byte of its (raw or compressed) data.
    let Frame::Chunk {
        offset,
        len,
        hash,
        codec,
        mut data,
    } = frames[2].clone()
    else {
        panic!()
    };
    if codec == Codec::Raw {
        data[100] ^= 1;
        let (code, msg) = err_code(s.on_frame(Frame::Chunk {
            offset,
            len,
            hash,
            codec,
            data,
        }));
        assert_eq!(code, ErrorCode::HashMismatch);
        assert!(msg.contains("cut is discarded"), "{msg}");
    } else {
        let mut h = hash;
        h[0] ^= 1;
        let (code, _) = err_code(s.on_frame(Frame::Chunk {
            offset,
            len,
            hash: h,
            codec,
            data,
        }));
        assert_eq!(code, ErrorCode::HashMismatch);
    }
    assert_still_at_cut_1(&fx, s, &cut1);
}

#[test]
fn counts_order_and_unexpected_frames() {
    let fx = Fixture::new(8);
    let mut rng = Rng(10);
    let set: RoaringBitmap = [1u32, 2, 5].into_iter().collect();
    // A missing chunk: CutEnd claims what was sent but the set has one more region.
    let (mut s, frames) = in_cut(&fx, &mut rng, &set);
    let cut1 = fx.device_bytes();
    s.on_frame(frames[1].clone()).unwrap();
    s.on_frame(frames[2].clone()).unwrap();
    let (code, msg) = err_code(s.on_frame(Frame::CutEnd {
        cut: 2,
        chunks: 2,
        bytes: 2 * 65536,
    }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("2 of its 3 chunks"), "{msg}");
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // A repeated chunk.
    let (mut s, frames) = in_cut(&fx, &mut rng, &set);
    let cut1 = fx.device_bytes();
    s.on_frame(frames[1].clone()).unwrap();
    let (code, _) = err_code(s.on_frame(frames[1].clone()));
    assert_eq!(code, ErrorCode::Protocol);
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // Frames out of place.
    let mut s = seeded(&fx, &mut rng);
    let (code, msg) = err_code(s.on_frame(Frame::Committed { cut: 1 }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("between cuts"), "{msg}");
    let mut s = ReplicaSession::new(s.into_store());
    let (code, msg) = err_code(s.on_frame(Frame::CutEnd {
        cut: 1,
        chunks: 0,
        bytes: 0,
    }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("before Hello"), "{msg}");
    let mut s = ReplicaSession::new(s.into_store());
    let mut h = hello(&fx.g, VOLUME);
    if let Frame::Hello { proto, .. } = &mut h {
        *proto = 99;
    }
    let (code, msg) = err_code(s.on_frame(h));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("protocol 99"), "{msg}");
}

#[test]
fn hash_requests() {
    let fx = Fixture::new(8);
    let mut rng = Rng(11);
    let mut s = seeded(&fx, &mut rng);
    let src = fx.source_bytes();
    let r = s
        .on_frame(Frame::HashRequest {
            first_region: 7,
            count: 2,
        })
        .unwrap();
    let expect: Vec<[u8; 32]> = (7..9)
        .map(|r| {
            let br = fx.g.region_byte_range(r);
            *blake3::hash(&src[br.start as usize..br.end as usize]).as_bytes()
        })
        .collect();
    assert_eq!(
        r,
        vec![Frame::Hashes {
            first_region: 7,
            hashes: expect
        }]
    );
    let (code, _) = err_code(s.on_frame(Frame::HashRequest {
        first_region: 8,
        count: 2,
    }));
    assert_eq!(code, ErrorCode::OutOfRange);
}

#[test]
fn empty_cut_advances_the_cut_id() {
    let fx = Fixture::new(4);
    let mut rng = Rng(12);
    let mut s = seeded(&fx, &mut rng);
    let r = feed(
        &mut s,
        cut_frames(
            &fx.source_bytes(),
            &fx.g,
            &RoaringBitmap::new(),
            2,
            Some(1),
            CutKind::Incremental,
        ),
    );
    assert_eq!(r.unwrap(), vec![Frame::Committed { cut: 2 }]);
}

/// Crash at `step` while committing cut 2 (then, if `recovery_crash`, again during the
/// recovery), reopen, and check the device is exactly cut 1 or cut 2 as the step demands.
fn crash_case(step: CommitStep, recovery_crash: Option<CommitStep>) {
    let fx = Fixture::new(6);
    let mut rng = Rng(100);
    let s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    let set: RoaringBitmap = [0u32, 2, 3, 6].into_iter().collect();
    for r in &set {
        let br = fx.g.region_byte_range(r.into());
        let mut d = vec![0u8; (br.end - br.start) as usize];
        rng.fill(&mut d);
        fs::OpenOptions::new()
            .write(true)
            .open(fx.source())
            .unwrap()
            .write_all_at_(&d, br.start);
    }
    let cut2 = fx.source_bytes();
    assert_ne!(cut1, cut2);
    let mut store = s.into_store();
    store.set_crash_point(Some(step));
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let r = feed(
        &mut s,
        cut_frames(&cut2, &fx.g, &set, 2, Some(1), CutKind::Incremental),
    );
    let e = r.expect_err("the crash must stop the commit");
    assert!(
        e.message.contains("injected crash"),
        "{step:?}: {}",
        e.message
    );
    drop(s); // the "process" is dead: files stay as they are

    let want = if step.is_durable() {
        (&cut2, 2)
    } else {
        (&cut1, 1)
    };
    if let Some(rs) = recovery_crash {
        if let Err(e) = ReplicaStore::open_with_crash_point(&fx.device(), &fx.state_dir(), rs) {
            assert!(matches!(e, StoreError::Crashed(_)), "{e}");
        }
    }
    let store = open(&fx);
    assert_eq!(store.state().unwrap().last_cut, want.1, "{step:?}");
    assert_same(&fx.device_bytes(), want.0, &format!("crash after {step:?}"));
    assert!(!fx.state_dir().join("journal").exists());
    match store.recovery() {
        RecoveryReport::Replayed {
            cut: 2, chunks: 4, ..
        } => assert!(step.is_durable()),
        RecoveryReport::Discarded { .. } => assert!(!step.is_durable()),
        RecoveryReport::Clean => assert_eq!(step, CommitStep::JournalRemoved),
        other => panic!("{step:?}: {other:?}"),
    }
    // The replica goes on: cut 3 on top of whatever it is at.
    drop(store);
    let mut s = ReplicaSession::new(open(&fx));
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let set3: RoaringBitmap = [1u32].into_iter().collect();
    let r = feed(
        &mut s,
        cut_frames(
            &cut2,
            &fx.g,
            &set3,
            want.1 + 1,
            Some(want.1),
            CutKind::Incremental,
        ),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: want.1 + 1 }]);
}

/// A store that a failure after the commit point stopped recovers in place, as a restart
/// would: its committed journal is replayed whole. A failed retry keeps it stopped, and the
/// next attempt waits (no replay at every reconnection).
#[test]
fn stopped_store_recovers_in_place() {
    let fx = Fixture::new(6);
    let mut rng = Rng(101);
    let s = seeded(&fx, &mut rng);
    let set = set(&[0, 2, 5]);
    let cut2 = rewrite_regions(&fx, &mut rng, &set);
    let mut store = s.into_store();
    let steps = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let counted = steps.clone();
    store.set_step_hook(Some(Box::new(move |_| {
        *counted.lock().unwrap() += 1;
        false
    })));
    store.set_crash_point(Some(CommitStep::DeviceSynced));
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let e = feed(
        &mut s,
        cut_frames(&cut2, &fx.g, &set, 2, Some(1), CutKind::Incremental),
    )
    .expect_err("stopped at DeviceSynced");
    assert!(e.message.contains("injected crash"), "{}", e.message);
    let mut store = s.into_store();
    assert!(store.is_stopped());
    // Still failing (the crash point is hit again in the replay): stays stopped.
    assert!(store.retry_recovery().is_err());
    assert!(store.is_stopped());
    // At once again: refused without an attempt.
    let before = *steps.lock().unwrap();
    let e = store.retry_recovery().expect_err("within the wait");
    assert!(matches!(e, StoreError::Dead(_)), "{e}");
    assert_eq!(
        *steps.lock().unwrap(),
        before,
        "a retry ran within the wait"
    );
    // The fault is gone; after the wait the replay succeeds.
    store.set_crash_point(None);
    std::thread::sleep(bdr_sync::replica::RETRY_FIRST);
    match store.retry_recovery().unwrap() {
        RecoveryReport::Replayed {
            cut: 2, chunks: 3, ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(!store.is_stopped());
    assert_eq!(store.state().unwrap().last_cut, 2);
    assert_same(&fx.device_bytes(), &cut2, "after the recovery in place");
    assert!(!fx.state_dir().join("journal").exists());
    // And it serves on.
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let set3 = [1u32].into_iter().collect();
    let cut3 = rewrite_regions(&fx, &mut rng, &set3);
    let r = feed(
        &mut s,
        cut_frames(&cut3, &fx.g, &set3, 3, Some(2), CutKind::Incremental),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 3 }]);
    assert_same(&fx.device_bytes(), &cut3, "cut 3");
}

trait WriteAt {
    fn write_all_at_(&self, d: &[u8], off: u64);
}
impl WriteAt for fs::File {
    fn write_all_at_(&self, d: &[u8], off: u64) {
        std::os::unix::fs::FileExt::write_all_at(self, d, off).unwrap()
    }
}

#[test]
fn crash_at_every_commit_step_leaves_cut_n_minus_1_or_n() {
    let steps = CommitStep::all(4);
    assert_eq!(steps.len(), 4 + 2 + 4 + 3);
    for step in steps {
        crash_case(step, None);
    }
}

#[test]
fn crash_during_recovery_is_recovered_again() {
    for step in [CommitStep::CommitRecord, CommitStep::DeviceWrite(1)] {
        for rs in [
            CommitStep::DeviceWrite(0),
            CommitStep::DeviceWrite(3),
            CommitStep::DeviceSynced,
            CommitStep::StateUpdated,
        ] {
            crash_case(step, Some(rs));
        }
    }
}

#[test]
fn torn_or_corrupt_uncommitted_journals_are_discarded() {
    // Crash right after the commit record, then damage the journal in various ways: a
    // journal whose commit record does not verify is discarded (the device was not yet
    // touched, so that is cut 1).
    for damage in 0..6 {
        let fx = Fixture::new(4);
        let mut rng = Rng(200 + damage);
        let s = seeded(&fx, &mut rng);
        let cut1 = fx.device_bytes();
        let set = scribble(&fx.source(), &fx.g, &mut rng, 3);
        let mut store = s.into_store();
        store.set_crash_point(Some(CommitStep::CommitRecord));
        let mut s = ReplicaSession::new(store);
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        assert!(feed(
            &mut s,
            cut_frames(
                &fx.source_bytes(),
                &fx.g,
                &set,
                2,
                Some(1),
                CutKind::Incremental
            )
        )
        .is_err());
        drop(s);
        let j = fx.state_dir().join("journal");
        let mut bytes = fs::read(&j).unwrap();
        match damage {
            0 => bytes.truncate(bytes.len() - 1),      // torn commit record
            1 => bytes.truncate(bytes.len() - 64 - 7), // torn chunk data, no commit
            2 => bytes[64 + 48 + 10] ^= 1,             // flipped data bit
            3 => bytes[64 + 9] ^= 1, // a record's offset: only the digest covers it
            4 => bytes[64 + 20] ^= 1, // a record's hash
            _ => bytes.truncate(30), // torn header
        }
        fs::write(&j, &bytes).unwrap();
        let store = open(&fx);
        assert!(
            matches!(store.recovery(), RecoveryReport::Discarded { .. }),
            "{damage}: {:?}",
            store.recovery()
        );
        assert_eq!(store.state().unwrap().last_cut, 1);
        assert_same(&fx.device_bytes(), &cut1, "discarded journal");
    }
}

/// A committed journal of version 1 (its digest covers the data too), as an older bdr
/// leaves it after a crash past the commit point, is still replayed; the same journal with
/// a version-2 digest under the version-1 magic is not.
#[test]
fn committed_version_1_journal_is_replayed() {
    for v1_digest in [true, false] {
        let fx = Fixture::new(4);
        let mut rng = Rng(300);
        let s = seeded(&fx, &mut rng);
        let cut1 = fx.device_bytes();
        let set = scribble(&fx.source(), &fx.g, &mut rng, 3);
        let cut2 = fx.source_bytes();
        let mut store = s.into_store();
        store.set_crash_point(Some(CommitStep::CommitRecord));
        let mut s = ReplicaSession::new(store);
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        let frames = cut_frames(&cut2, &fx.g, &set, 2, Some(1), CutKind::Incremental);
        assert!(feed(&mut s, frames).is_err());
        drop(s);
        let j = fx.state_dir().join("journal");
        let mut bytes = fs::read(&j).unwrap();
        assert_eq!(&bytes[0..8], b"BDRJRNL2");
        bytes[0..8].copy_from_slice(b"BDRJRNL1");
        let body = bytes.len() - 64;
        if v1_digest {
            let digest = blake3::hash(&bytes[..body]);
            bytes[body + 32..].copy_from_slice(digest.as_bytes());
        } else {
            // The version-2 digest did not cover the old magic: recompute it the v2 way.
            let mut h = blake3::Hasher::new();
            h.update(&bytes[..64]);
            let mut at = 64;
            while at < body {
                let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
                h.update(&bytes[at..at + 48]);
                at += 48 + len;
            }
            bytes[body + 32..].copy_from_slice(h.finalize().as_bytes());
        }
        fs::write(&j, &bytes).unwrap();
        let store = open(&fx);
        if v1_digest {
            assert!(
                matches!(store.recovery(), RecoveryReport::Replayed { cut: 2, .. }),
                "{:?}",
                store.recovery()
            );
            assert_eq!(store.state().unwrap().last_cut, 2);
            assert_same(&fx.device_bytes(), &cut2, "replayed version-1 journal");
        } else {
            assert!(
                matches!(store.recovery(), RecoveryReport::Discarded { .. }),
                "{:?}",
                store.recovery()
            );
            assert_same(&fx.device_bytes(), &cut1, "discarded journal");
        }
    }
}

#[test]
fn abort_mid_cut_keeps_the_last_cut() {
    let fx = Fixture::new(8);
    let mut rng = Rng(13);
    let set: RoaringBitmap = [1u32, 2, 5].into_iter().collect();
    let (mut s, frames) = in_cut(&fx, &mut rng, &set);
    let cut1 = fx.device_bytes();
    s.on_frame(frames[1].clone()).unwrap();
    assert_eq!(s.in_cut(), Some(2));
    assert!(fx.state_dir().join("journal").exists());
    s.abort();
    assert_still_at_cut_1(&fx, s, &cut1);
}

/// Mounts a 1 MiB tmpfs on `dir`; `false` if that is not possible here.
fn mount_small_tmpfs(dir: &Path) -> bool {
    fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M,mode=0700", "tmpfs"])
        .arg(dir)
        .status();
    matches!(st, Ok(s) if s.success())
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A 40-region replica (2.5 MiB per full cut) whose state dir is a 1 MiB tmpfs, seeded
/// straight to the device with a full rescan as cut 1 (a seed needs no journal space).
/// `None`, the test skipped, where no tmpfs can be mounted. Bind the tuple in this order
/// (`let (fx, _unmount, mut rng, mut s)`): the session closes, then the tmpfs is unmounted,
/// then the fixture removed.
fn seeded_on_small_tmpfs(test: &str, seed: u64) -> Option<(Fixture, Unmount, Rng, ReplicaSession)> {
    let fx = Fixture::new(40);
    let mut rng = Rng(seed);
    fx.create(&mut rng, 0);
    let dir = fx.state_dir();
    if !mount_small_tmpfs(&dir) {
        eprintln!("SKIPPED {test}: cannot mount a tmpfs (not root?)");
        return None;
    }
    let unmount = Unmount(dir);
    let mut s = ReplicaSession::new(open(&fx));
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let src = fx.source_bytes();
    let all = all_regions(&fx.g);
    let r = feed(
        &mut s,
        cut_frames(&src, &fx.g, &all, 1, None, CutKind::Rescan),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 1 }]);
    Some((fx, unmount, rng, s))
}

#[test]
fn state_dir_full_aborts_the_cut_with_no_space() {
    let Some((fx, _unmount, mut rng, mut s)) =
        seeded_on_small_tmpfs("state_dir_full_aborts_the_cut_with_no_space", 14)
    else {
        return;
    };
    let dir = fx.state_dir();
    let cut1 = fx.device_bytes();
    // A full cut needs ~2.5 MiB of journal.
    scribble(&fx.source(), &fx.g, &mut rng, 20);
    let src2 = fx.source_bytes();
    let frames = cut_frames(
        &src2,
        &fx.g,
        &all_regions(&fx.g),
        2,
        Some(1),
        CutKind::Incremental,
    );
    let e = feed(&mut s, frames).unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSpace, "{}", e.message);
    assert!(e.message.contains("is full"), "{}", e.message);
    assert!(e.message.contains("move --state-dir"), "{}", e.message);
    assert!(
        e.message.contains(&dir.display().to_string()),
        "{}",
        e.message
    );
    let store = s.into_store();
    assert_eq!(store.state().unwrap().last_cut, 1);
    assert!(!dir.join("journal").exists(), "partial journal left behind");
    assert_same(&fx.device_bytes(), &cut1, "after the refused cut");
    // A cut that fits still commits.
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let set: RoaringBitmap = [3u32, 4].into_iter().collect();
    let r = feed(
        &mut s,
        cut_frames(&src2, &fx.g, &set, 2, Some(1), CutKind::Incremental),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 2 }]);
    drop(s);
}

/// Takes every free block of `dir`'s file system (files `hog.N`, allocated in halving
/// pieces down to 4 KiB); returns the bytes taken.
fn fill_up(dir: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    let (mut taken, mut piece, mut n) = (0u64, 1i64 << 30, 0);
    while piece >= 4096 {
        let path = dir.join(format!("hog.{n}"));
        let f = fs::File::create(&path).unwrap();
        // SAFETY: posix_fallocate on a descriptor this function owns.
        if unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, piece) } == 0 {
            taken += piece as u64;
            n += 1;
        } else {
            drop(f);
            fs::remove_file(&path).unwrap();
            piece /= 2;
        }
    }
    taken
}

/// Something else takes the state dir's last blocks in the middle of a commit, right after
/// the commit record (when the journal's unused preallocation is released): the commit
/// still completes, its state file written into the space reserved at the cut's start, and
/// the next cut is refused with NoSpace up front.
#[test]
fn state_dir_filled_during_a_commit_does_not_fail_it() {
    let Some((fx, _unmount, mut rng, s)) =
        seeded_on_small_tmpfs("state_dir_filled_during_a_commit_does_not_fail_it", 15)
    else {
        return;
    };
    let dir = fx.state_dir();

    let mut store = s.into_store();
    let (hog_dir, taken) = (
        dir.clone(),
        std::sync::Arc::new(std::sync::Mutex::new(0u64)),
    );
    let t = taken.clone();
    store.set_step_hook(Some(Box::new(move |step| {
        if step == CommitStep::CommitRecord {
            *t.lock().unwrap() = fill_up(&hog_dir);
        }
        false
    })));
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let small = set(&[3, 4, 9]);
    let img = rewrite_regions(&fx, &mut rng, &small);
    let r = feed(
        &mut s,
        cut_frames(&img, &fx.g, &small, 2, Some(1), CutKind::Incremental),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 2 }]);
    assert!(*taken.lock().unwrap() > 0, "the hook took no space");
    let mut store = s.into_store();
    store.set_step_hook(None);
    assert_eq!(store.state().unwrap().last_cut, 2);
    assert_same(&fx.device_bytes(), &img, "after the commit");
    assert!(!dir.join("journal").exists(), "journal left behind");

    // The journal's removal freed its blocks; taken as well, the next cut is refused
    // before any data, nothing lost.
    fill_up(&dir);
    let mut s = ReplicaSession::new(store);
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let img3 = rewrite_regions(&fx, &mut rng, &small);
    let e = feed(
        &mut s,
        cut_frames(&img3, &fx.g, &small, 3, Some(2), CutKind::Incremental),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSpace, "{}", e.message);
    let store = s.into_store();
    assert_eq!(store.state().unwrap().last_cut, 2);
    assert_same(&fx.device_bytes(), &img, "after the refused cut");
    drop(store);
    // Space back: the cut goes through.
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("hog.") {
            fs::remove_file(p).unwrap();
        }
    }
    let mut s = ReplicaSession::new(open(&fx));
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    let r = feed(
        &mut s,
        cut_frames(&img3, &fx.g, &small, 3, Some(2), CutKind::Incremental),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 3 }]);
    assert_same(&fx.device_bytes(), &img3, "after space came back");
}

#[test]
fn crash_at_every_step_of_a_seed_leaves_a_new_replica_or_cut_1() {
    let steps = CommitStep::all_seed(5);
    assert_eq!(steps.len(), 5 + 2);
    for step in steps {
        let fx = Fixture::new(4);
        let mut rng = Rng(300);
        fx.create(&mut rng, 0);
        let src = fx.source_bytes();
        let all = all_regions(&fx.g);
        let mut store = open(&fx);
        store.set_crash_point(Some(step));
        let mut s = ReplicaSession::new(store);
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        let e = feed(
            &mut s,
            cut_frames(&src, &fx.g, &all, 1, None, CutKind::Rescan),
        )
        .unwrap_err();
        assert!(e.message.contains("injected crash"), "{}", e.message);
        drop(s);
        assert!(
            !fx.state_dir().join("journal").exists(),
            "a seed writes no journal"
        );
        let store = open(&fx);
        match store.state() {
            // Not committed: still a new replica, which accepts only a rescan.
            None => assert_ne!(step, CommitStep::StateUpdated),
            Some(st) => {
                assert_eq!(step, CommitStep::StateUpdated);
                assert_eq!(st.last_cut, 1);
                assert_same(&fx.device_bytes(), &src, "seed committed");
            }
        }
        // A rescan from there completes the seed.
        let mut s = ReplicaSession::new(store);
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        let r = feed(
            &mut s,
            cut_frames(&src, &fx.g, &all, 2, None, CutKind::Rescan),
        )
        .unwrap();
        assert_eq!(r, vec![Frame::Committed { cut: 2 }]);
        assert_same(&fx.device_bytes(), &src, "after the second seed");
    }
}

#[test]
fn region_set_in_several_pieces() {
    let fx = Fixture::new(12);
    let mut rng = Rng(15);
    let mut s = seeded(&fx, &mut rng);
    scribble(&fx.source(), &fx.g, &mut rng, 10);
    let src = fx.source_bytes();
    let set: RoaringBitmap = [1u32, 4, 9, 12].into_iter().collect();
    let mut frames = cut_frames(&src, &fx.g, &set, 2, Some(1), CutKind::Incremental);
    // Split the set over CutBegin and two CutRegions.
    let ser = |v: &[u32]| {
        let b: RoaringBitmap = v.iter().copied().collect();
        let mut out = vec![];
        b.serialize_into(&mut out).unwrap();
        out
    };
    let Frame::CutBegin { regions, .. } = &mut frames[0] else {
        panic!()
    };
    *regions = ser(&[1]);
    frames.insert(
        1,
        Frame::CutRegions {
            regions: ser(&[4, 9]),
        },
    );
    frames.insert(
        2,
        Frame::CutRegions {
            regions: ser(&[12]),
        },
    );
    let mut expect = fx.device_bytes();
    for r in &set {
        let br = fx.g.region_byte_range(r.into());
        let (a, b) = (br.start as usize, br.end as usize);
        expect[a..b].copy_from_slice(&src[a..b]);
    }
    let r = feed(&mut s, frames.clone()).unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 2 }]);
    assert_same(&fx.device_bytes(), &expect, "pieces");
    // Without the last piece, region 12's chunk is outside the cut.
    let mut s = ReplicaSession::new(s.into_store());
    s.on_frame(hello(&fx.g, VOLUME)).unwrap();
    frames.remove(2);
    if let Frame::CutBegin { cut, parent, .. } = &mut frames[0] {
        *cut = 3;
        *parent = Some(2);
    }
    let (code, _) = err_code(feed(&mut s, frames));
    assert_eq!(code, ErrorCode::OutOfRange);
}

/// Writes fresh random data over each region of `set` of the source; returns the new image.
fn rewrite_regions(fx: &Fixture, rng: &mut Rng, set: &RoaringBitmap) -> Vec<u8> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(fx.source())
        .unwrap();
    for r in set {
        let br = fx.g.region_byte_range(r.into());
        let mut d = vec![0u8; (br.end - br.start) as usize];
        rng.fill(&mut d);
        f.write_all_at_(&d, br.start);
    }
    fx.source_bytes()
}

fn set(v: &[u32]) -> RoaringBitmap {
    v.iter().copied().collect()
}

/// A cut in three passes (pre-copy): regions copied in an early pass from an older image
/// and shipped again later end with the later content; the committed device is exactly
/// the last image. Torn data in an early pass (garbage) is overwritten too.
#[test]
fn passes_later_chunk_of_a_region_wins() {
    let fx = Fixture::new(8);
    let mut rng = Rng(21);
    let mut s = seeded(&fx, &mut rng);
    let p1 = set(&[0, 2, 3, 5, 8]);
    let mut a = rewrite_regions(&fx, &mut rng, &p1);
    // Region 3 was torn while pass 1 read it: garbage in the copy.
    let br = fx.g.region_byte_range(3);
    rng.fill(&mut a[br.start as usize..(br.start + 100) as usize]);
    let p2 = set(&[3, 5, 6]);
    let b = rewrite_regions(&fx, &mut rng, &p2);
    let p3 = set(&[5]);
    let c = rewrite_regions(&fx, &mut rng, &p3);
    let frames = pass_frames(&[(&a, &p1), (&b, &p2), (&c, &p3)], &fx.g, 2, Some(1));
    assert_eq!(
        frames
            .iter()
            .filter(|f| matches!(f, Frame::CutPass { .. }))
            .count(),
        2
    );
    let r = feed(&mut s, frames).unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 2 }]);
    assert_same(&fx.device_bytes(), &c, "after the 3-pass cut");
    // Empty later passes are fine; the next cut goes on from there.
    let p4 = set(&[1]);
    let d = rewrite_regions(&fx, &mut rng, &p4);
    let empty = RoaringBitmap::new();
    let r = feed(
        &mut s,
        pass_frames(&[(&d, &p4), (&d, &empty)], &fx.g, 3, Some(2)),
    )
    .unwrap();
    assert_eq!(r, vec![Frame::Committed { cut: 3 }]);
    assert_same(&fx.device_bytes(), &d, "after cut 3");
}

/// Pass rules: a pass must be complete before the next starts and before CutEnd; chunks of
/// a pass must be in that pass's set, in increasing order within the pass; CutRegions only
/// before a pass's first chunk; CutPass only inside a cut. Each refusal leaves cut 1.
#[test]
fn pass_rules_are_enforced() {
    let fx = Fixture::new(8);
    let mut rng = Rng(22);
    let p1 = set(&[1, 4]);
    let p2 = set(&[2, 4]);

    // CutPass before pass 1 is complete.
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    let img = rewrite_regions(&fx, &mut rng, &set(&[1, 2, 4]));
    let f = pass_frames(&[(&img, &p1), (&img, &p2)], &fx.g, 2, Some(1));
    // f: CutBegin, chunk 1, chunk 4, CutPass, chunk 2, chunk 4, CutEnd
    assert!(matches!(f[3], Frame::CutPass { .. }));
    s.on_frame(f[0].clone()).unwrap();
    s.on_frame(f[1].clone()).unwrap();
    let (code, msg) = err_code(s.on_frame(f[3].clone()));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(
        msg.contains("pass 1 of cut 2 ended after 1 of its 2"),
        "{msg}"
    );
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // A chunk of pass 1's set that pass 2 does not announce.
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    let img = rewrite_regions(&fx, &mut rng, &set(&[1, 2, 4]));
    let f = pass_frames(&[(&img, &p1), (&img, &p2)], &fx.g, 2, Some(1));
    feed(&mut s, f[..4].to_vec()).unwrap();
    let (code, msg) = err_code(s.on_frame(f[1].clone()));
    assert_eq!(code, ErrorCode::OutOfRange);
    assert!(msg.contains("pass 2 of cut 2"), "{msg}");
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // A chunk repeated within a pass; CutRegions after a pass's first chunk.
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    let img = rewrite_regions(&fx, &mut rng, &set(&[1, 2, 4]));
    let f = pass_frames(&[(&img, &p1), (&img, &p2)], &fx.g, 2, Some(1));
    feed(&mut s, f[..5].to_vec()).unwrap();
    let (code, _) = err_code(s.on_frame(f[4].clone()));
    assert_eq!(code, ErrorCode::Protocol);
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    feed(&mut s, f[..5].to_vec()).unwrap();
    let (code, msg) = err_code(s.on_frame(Frame::CutRegions {
        regions: bdr_sync::chunk::region_pieces(&set(&[7])).remove(0),
    }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("after the first chunk of pass 2"), "{msg}");
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // CutEnd before the last pass is complete; CutEnd counting only one pass.
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    let img = rewrite_regions(&fx, &mut rng, &set(&[1, 2, 4]));
    let f = pass_frames(&[(&img, &p1), (&img, &p2)], &fx.g, 2, Some(1));
    feed(&mut s, f[..5].to_vec()).unwrap();
    let (code, msg) = err_code(s.on_frame(f[6].clone()));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(
        msg.contains("pass 2 of cut 2 ended after 1 of its 2"),
        "{msg}"
    );
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());
    let mut s = seeded(&fx, &mut rng);
    let cut1 = fx.device_bytes();
    feed(&mut s, f[..6].to_vec()).unwrap();
    let (code, msg) = err_code(s.on_frame(Frame::CutEnd {
        cut: 2,
        chunks: 2,
        bytes: 2 * 65536,
    }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("4 chunks"), "{msg}");
    assert_still_at_cut_1(&fx, s, &cut1);
    let _ = fs::remove_dir_all(fx.state_dir());

    // CutPass between cuts.
    let mut s = seeded(&fx, &mut rng);
    let (code, msg) = err_code(s.on_frame(Frame::CutPass {
        regions: bdr_sync::chunk::region_pieces(&p1).remove(0),
    }));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("CutPass frame between cuts"), "{msg}");
}

/// A crash after every commit step of a 3-pass cut (regions repeated across passes, the
/// journal grown at each pass) leaves, after recovery, exactly cut 1 or cut 2.
#[test]
fn crash_at_every_step_of_a_multi_pass_cut() {
    let p1 = set(&[0, 2, 3, 6]);
    let p2 = set(&[2, 5]);
    let p3 = set(&[2, 3]);
    let total = p1.len() + p2.len() + p3.len();
    for step in CommitStep::all(total) {
        let fx = Fixture::new(6);
        let mut rng = Rng(200);
        let s = seeded(&fx, &mut rng);
        let cut1 = fx.device_bytes();
        let a = rewrite_regions(&fx, &mut rng, &p1);
        let b = rewrite_regions(&fx, &mut rng, &p2);
        let c = rewrite_regions(&fx, &mut rng, &p3);
        let mut store = s.into_store();
        store.set_crash_point(Some(step));
        let mut s = ReplicaSession::new(store);
        s.on_frame(hello(&fx.g, VOLUME)).unwrap();
        let e = feed(
            &mut s,
            pass_frames(&[(&a, &p1), (&b, &p2), (&c, &p3)], &fx.g, 2, Some(1)),
        )
        .expect_err("the crash must stop the commit");
        assert!(e.message.contains("injected crash"), "{step:?}: {e}");
        drop(s);
        let store = open(&fx);
        let (want, cut) = if step.is_durable() {
            (&c, 2)
        } else {
            (&cut1, 1)
        };
        assert_eq!(store.state().unwrap().last_cut, cut, "{step:?}");
        assert_same(&fx.device_bytes(), want, &format!("crash after {step:?}"));
        assert!(!fx.state_dir().join("journal").exists());
    }
}

/// A later pass that does not fit the state dir is refused with NoSpace when it starts;
/// the journal is removed and the replica stays at its last cut.
#[test]
fn pass_that_does_not_fit_is_refused_with_no_space() {
    let Some((fx, _unmount, mut rng, mut s)) =
        seeded_on_small_tmpfs("pass_that_does_not_fit_is_refused_with_no_space", 23)
    else {
        return;
    };
    let dir = fx.state_dir();
    let all = all_regions(&fx.g);
    let cut1 = fx.device_bytes();
    let small = set(&[1, 2]);
    let img = rewrite_regions(&fx, &mut rng, &all);
    let e = feed(
        &mut s,
        pass_frames(&[(&img, &small), (&img, &all)], &fx.g, 2, Some(1)),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSpace, "{}", e.message);
    let store = s.into_store();
    assert_eq!(store.state().unwrap().last_cut, 1);
    assert!(!dir.join("journal").exists(), "partial journal left behind");
    assert_same(&fx.device_bytes(), &cut1, "after the refused cut");
}
