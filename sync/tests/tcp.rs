//! End to end over real TCP loopback sockets: a primary image file shipped to a replica
//! served by `serve`, cut after cut, rescans, verify, and hostile or broken peers.

mod common;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bdr_sync::frame::{Codec, CutKind, ErrorCode, Frame, FrameReader, FrameWriter};
use bdr_sync::replica::{serve, ServeOptions, ServeStatus, StatusHandle};
use bdr_sync::ship::{CutIds, CutImage, PrimaryConn, Progress, ShipError, ShipOptions};
use bdr_sync::{ReplicaStore, RoaringBitmap};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    status: StatusHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<ReplicaStore>>,
}

impl Server {
    async fn start(fx: &Fixture, opts: ServeOptions) -> Server {
        let store = ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap();
        Server::start_store(store, opts).await
    }

    async fn start_store(store: ReplicaStore, opts: ServeOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(Mutex::new(ServeStatus::default()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, opts, status.clone(), async {
            let _ = rx.await;
        }));
        Server {
            addr,
            status,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) -> ReplicaStore {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap()
    }

    fn status(&self) -> ServeStatus {
        self.status.lock().unwrap().clone()
    }

    /// Waits until no session is active (the server noticed a disconnection).
    async fn idle(&self) {
        for _ in 0..500 {
            if self.status().peer.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the session did not end");
    }
}

fn image(fx: &Fixture) -> Arc<dyn CutImage> {
    Arc::new(File::open(fx.source()).unwrap())
}

fn opts() -> ShipOptions {
    ShipOptions {
        in_flight: 4,
        hash_batch: 7, // several batches even on small volumes
        ..ShipOptions::default()
    }
}

async fn connect(
    srv: &Server,
    fx: &Fixture,
    volume: [u8; 16],
) -> Result<PrimaryConn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>, ShipError>
{
    PrimaryConn::connect(srv.addr, volume, fx.g, opts()).await
}

fn no_progress() -> impl FnMut(Progress) + Send {
    |_| {}
}

/// Seeds the replica with a full Rescan cut 1 of the current source.
async fn seed(srv: &Server, fx: &Fixture) {
    let mut c = connect(srv, fx, VOLUME).await.unwrap();
    c.ship_cut(
        image(fx),
        &all_regions(&fx.g),
        CutIds {
            cut: 1,
            parent: None,
        },
        CutKind::Rescan,
    )
    .await
    .unwrap();
    c.close().await;
    srv.idle().await;
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after the seed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_successive_cuts_then_reconnect() {
    let fx = Fixture::new(64);
    let mut rng = Rng(21);
    fx.create(&mut rng, 4096);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    assert_eq!(c.replica().last_cut, None);
    assert_eq!(c.replica().volume, None);
    assert_eq!(c.replica().dev_bytes, fx.g.dev_bytes() + 4096);
    let all = all_regions(&fx.g);
    let st = c
        .ship_cut(image(&fx), &all, c.next_cut_ids(), CutKind::Rescan)
        .await
        .unwrap();
    assert_eq!(st.chunks, fx.g.nr_regions);
    assert_eq!(st.bytes_read, fx.g.dev_bytes());
    assert!(
        st.bytes_sent >= fx.g.dev_bytes(),
        "random data does not compress"
    );
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after cut 1");
    for cut in 2..=4u64 {
        let set = scribble(&fx.source(), &fx.g, &mut rng, 8);
        let ids = c.next_cut_ids();
        assert_eq!(
            ids,
            CutIds {
                cut,
                parent: Some(cut - 1)
            }
        );
        let st = c
            .ship_cut(image(&fx), &set, ids, CutKind::Incremental)
            .await
            .unwrap();
        assert_eq!(st.regions, set.len());
        assert_eq!(st.chunks, set.len());
        assert!(st.bytes_read <= set.len() * fx.g.region_bytes());
        assert_same(
            &fx.device_bytes(),
            &fx.source_bytes(),
            &format!("after cut {cut}"),
        );
        assert_eq!(c.replica().last_cut, Some(cut));
        assert_eq!(srv.status().last_committed.map(|x| x.0), Some(cut));
    }
    // A compressible cut: zeros compress.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.source())
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 3 * 65536], 10 * 65536).unwrap();
    let set: RoaringBitmap = (10u32..13).collect();
    let st = c
        .ship_cut(image(&fx), &set, c.next_cut_ids(), CutKind::Incremental)
        .await
        .unwrap();
    assert_eq!(st.compressed_chunks, 3);
    assert!(st.bytes_sent < 10_000, "{}", st.bytes_sent);
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after cut 5");
    c.close().await;
    srv.idle().await;

    // A new connection sees the committed state and goes on.
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    assert_eq!(c.replica().last_cut, Some(5));
    assert_eq!(c.replica().volume, Some(VOLUME));
    let set = scribble(&fx.source(), &fx.g, &mut rng, 3);
    c.ship_cut(image(&fx), &set, c.next_cut_ids(), CutKind::Incremental)
        .await
        .unwrap();
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after cut 6");
    c.close().await;
    srv.idle().await;
    let status = srv.status();
    assert_eq!(status.sessions, 2);
    assert_eq!(status.commits, 6);
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let store = srv.stop().await;
    assert_eq!(store.state().unwrap().last_cut, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_ships_only_differing_chunks() {
    let fx = Fixture::new(50);
    let mut rng = Rng(22);
    fx.create(&mut rng, 0);
    // 12 regions of the source are zeros: an empty (zeroed) replica already has them.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.source())
        .unwrap();
    for r in [0u64, 3, 4, 5, 9, 17, 20, 33, 34, 40, 49, 50] {
        let br = fx.g.region_byte_range(r);
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &vec![0u8; (br.end - br.start) as usize],
            br.start,
        )
        .unwrap();
    }
    let srv = Server::start(&fx, ServeOptions::default()).await;
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    let mut seen = Vec::new();
    let mut prog = |p: Progress| seen.push(p);
    let st = c
        .ship_rescan(image(&fx), c.next_cut_ids(), &mut prog)
        .await
        .unwrap();
    let nr = fx.g.nr_regions;
    assert_eq!(st.compared, nr);
    assert_eq!(st.differing, nr - 12);
    assert_eq!(st.chunks, nr - 12);
    assert!(
        seen.contains(&Progress::Comparing {
            done: nr,
            total: nr,
            differing: nr - 12
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Progress::Shipping {
            done: nr - 12,
            total: nr - 12
        }),
        "{seen:?}"
    );
    assert_same(
        &fx.device_bytes(),
        &fx.source_bytes(),
        "after rescan of an empty replica",
    );
    assert_eq!(c.replica().last_cut, Some(1));

    // Nothing differs now.
    let v = c.verify(image(&fx), &mut no_progress()).await.unwrap();
    assert!(v.differing.is_empty(), "{:?}", v.differing);
    assert_eq!(v.stats.compared, nr);

    // Stale replica: change exact regions on the source (the replica "missed" them).
    let changed = [2u64, 7, 8, 30, 50];
    for r in changed {
        let br = fx.g.region_byte_range(r);
        let mut d = vec![0u8; (br.end - br.start) as usize];
        rng.fill(&mut d);
        std::os::unix::fs::FileExt::write_all_at(&f, &d, br.start).unwrap();
    }
    let v = c.verify(image(&fx), &mut no_progress()).await.unwrap();
    let rb = fx.g.region_bytes();
    assert_eq!(
        v.differing,
        vec![
            2 * rb..3 * rb,
            7 * rb..9 * rb,
            30 * rb..31 * rb,
            50 * rb..fx.g.dev_bytes()
        ]
    );
    assert_eq!(v.stats.differing, 5);
    let st = c
        .ship_rescan(image(&fx), c.next_cut_ids(), &mut no_progress())
        .await
        .unwrap();
    assert_eq!(st.chunks, changed.len() as u64);
    assert_eq!(st.differing, changed.len() as u64);
    assert_same(
        &fx.device_bytes(),
        &fx.source_bytes(),
        "after rescan of a stale replica",
    );
    assert_eq!(c.replica().last_cut, Some(2));
    c.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_volume_and_device_too_small_over_tcp() {
    let fx = Fixture::new(8);
    fx.create(&mut Rng(23), 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    seed(&srv, &fx).await;
    let e = connect(&srv, &fx, OTHER_VOLUME).await.err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::WrongVolume), "{e}");
    assert!(e.to_string().contains("wipe --state-dir"), "{e}");
    srv.idle().await;
    assert_eq!(
        srv.status().last_error.unwrap().code,
        ErrorCode::WrongVolume
    );

    let bigger = bdr_sync::Geometry::new(128, fx.g.dev_sectors + 1).unwrap();
    let e = PrimaryConn::connect(srv.addr, VOLUME, bigger, opts())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::DeviceTooSmall), "{e}");
    srv.idle().await;
    let store = srv.stop().await;
    assert_eq!(store.state().unwrap().last_cut, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_parent_is_refused_while_the_primary_is_still_sending() {
    let fx = Fixture::new(300); // ~19 MiB: the refusal arrives mid-stream
    let mut rng = Rng(24);
    fx.create(&mut rng, 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    seed(&srv, &fx).await;
    let cut1 = fx.device_bytes();
    scribble(&fx.source(), &fx.g, &mut rng, 5);
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    let e = c
        .ship_cut(
            image(&fx),
            &all_regions(&fx.g),
            CutIds {
                cut: 3,
                parent: Some(2),
            },
            CutKind::Incremental,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::WrongParent), "{e}");
    assert!(e.to_string().contains("last committed cut is 1"), "{e}");
    // The connection is unusable afterwards.
    let e = c
        .ship_cut(
            image(&fx),
            &RoaringBitmap::new(),
            CutIds {
                cut: 2,
                parent: Some(1),
            },
            CutKind::Incremental,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ShipError::Broken), "{e}");
    srv.idle().await;
    assert_same(&fx.device_bytes(), &cut1, "after the refused cut");
    srv.stop().await;
}

/// A raw connection that has said Hello.
async fn raw(
    srv: &Server,
    fx: &Fixture,
) -> (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let (r, w) = s.into_split();
    let (mut r, mut w) = (FrameReader::new(r), FrameWriter::new(w));
    w.write_frame(&hello(&fx.g, VOLUME)).await.unwrap();
    assert!(matches!(
        r.read_frame().await.unwrap(),
        Frame::Welcome { .. }
    ));
    (r, w)
}

async fn expect_error(r: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>) -> (ErrorCode, String) {
    match r.read_frame_timeout(Duration::from_secs(10)).await.unwrap() {
        Frame::Error { code, message } => (code, message),
        other => panic!("expected an Error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_out_of_range_chunks_over_tcp() {
    let fx = Fixture::new(8);
    let mut rng = Rng(25);
    fx.create(&mut rng, 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    seed(&srv, &fx).await;
    let cut1 = fx.device_bytes();
    scribble(&fx.source(), &fx.g, &mut rng, 5);
    let src = fx.source_bytes();
    let set: RoaringBitmap = [1u32, 2].into_iter().collect();
    let frames = cut_frames(&src, &fx.g, &set, 2, Some(1), CutKind::Incremental);

    // Hash mismatch: a byte of the chunk's data flipped on the way (hash kept).
    let (mut r, mut w) = raw(&srv, &fx).await;
    w.write_frame(&frames[0]).await.unwrap();
    let Frame::Chunk {
        offset,
        len,
        hash,
        codec,
        mut data,
    } = frames[1].clone()
    else {
        panic!()
    };
    assert_eq!(codec, Codec::Raw);
    data[7] ^= 0x80;
    w.write_frame(&Frame::Chunk {
        offset,
        len,
        hash,
        codec,
        data,
    })
    .await
    .unwrap();
    let (code, msg) = expect_error(&mut r).await;
    assert_eq!(code, ErrorCode::HashMismatch, "{msg}");
    srv.idle().await;
    assert_same(&fx.device_bytes(), &cut1, "after the tampered cut");

    // A chunk past the device end.
    let (mut r, mut w) = raw(&srv, &fx).await;
    w.write_frame(&frames[0]).await.unwrap();
    let data = vec![1u8; 65536];
    w.write_frame(&Frame::Chunk {
        offset: fx.g.dev_bytes() + 65536 * 10,
        len: 65536,
        hash: *blake3::hash(&data).as_bytes(),
        codec: Codec::Raw,
        data,
    })
    .await
    .unwrap();
    let (code, msg) = expect_error(&mut r).await;
    assert_eq!(code, ErrorCode::OutOfRange, "{msg}");
    srv.idle().await;
    assert_eq!(srv.status().last_error.unwrap().code, ErrorCode::OutOfRange);
    assert_same(&fx.device_bytes(), &cut1, "after the out-of-range chunk");

    // Garbage bytes.
    let (mut r, mut w) = raw(&srv, &fx).await;
    w.get_mut()
        .write_all(b"\x00\x01garbage garbage garbage garbage")
        .await
        .unwrap();
    let (code, _) = expect_error(&mut r).await;
    assert_eq!(code, ErrorCode::BadFrame);
    srv.idle().await;

    // And the genuine cut still goes through afterwards.
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    c.ship_cut(image(&fx), &set, c.next_cut_ids(), CutKind::Incremental)
        .await
        .unwrap();
    let mut expect = cut1.clone();
    for r in &set {
        let br = fx.g.region_byte_range(r.into());
        expect[br.start as usize..br.end as usize]
            .copy_from_slice(&src[br.start as usize..br.end as usize]);
    }
    assert_same(&fx.device_bytes(), &expect, "after the genuine cut");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_that_never_ends_times_out() {
    let fx = Fixture::new(8);
    let mut rng = Rng(26);
    fx.create(&mut rng, 0);
    let srv = Server::start(
        &fx,
        ServeOptions {
            cut_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        },
    )
    .await;
    seed(&srv, &fx).await;
    let cut1 = fx.device_bytes();
    scribble(&fx.source(), &fx.g, &mut rng, 5);
    let set: RoaringBitmap = [1u32, 2].into_iter().collect();
    let frames = cut_frames(
        &fx.source_bytes(),
        &fx.g,
        &set,
        2,
        Some(1),
        CutKind::Incremental,
    );
    let (mut r, mut w) = raw(&srv, &fx).await;
    w.write_frame(&frames[0]).await.unwrap();
    w.write_frame(&frames[1]).await.unwrap();
    // ... and nothing more.
    let t0 = std::time::Instant::now();
    let (code, msg) = expect_error(&mut r).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("cut 2 made no progress"), "{msg}");
    srv.idle().await;
    assert!(srv
        .status()
        .last_error
        .unwrap()
        .message
        .contains("no progress"));
    assert!(!fx.state_dir().join("journal").exists());
    let store = srv.stop().await;
    assert_eq!(store.state().unwrap().last_cut, 1);
    assert_same(&fx.device_bytes(), &cut1, "after the timed-out cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_cut_keeps_the_last_cut() {
    let fx = Fixture::new(8);
    let mut rng = Rng(27);
    fx.create(&mut rng, 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    seed(&srv, &fx).await;
    let cut1 = fx.device_bytes();
    scribble(&fx.source(), &fx.g, &mut rng, 5);
    let set: RoaringBitmap = [1u32, 2, 3].into_iter().collect();
    let frames = cut_frames(
        &fx.source_bytes(),
        &fx.g,
        &set,
        2,
        Some(1),
        CutKind::Incremental,
    );
    let (r, mut w) = raw(&srv, &fx).await;
    for f in &frames[..3] {
        w.write_frame(f).await.unwrap();
    }
    w.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(srv.status().in_cut, Some(2));
    drop((r, w));
    srv.idle().await;
    assert!(srv
        .status()
        .last_error
        .unwrap()
        .message
        .contains("middle of cut 2"));
    assert_same(&fx.device_bytes(), &cut1, "after the dropped cut");
    // The next session sees cut 1 and ships cut 2 again.
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    assert_eq!(c.replica().last_cut, Some(1));
    c.ship_cut(image(&fx), &set, c.next_cut_ids(), CutKind::Incremental)
        .await
        .unwrap();
    let store = srv.stop().await;
    assert_eq!(store.state().unwrap().last_cut, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_primary_is_told_busy() {
    let fx = Fixture::new(4);
    fx.create(&mut Rng(28), 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    let (_r1, _w1) = raw(&srv, &fx).await;
    let e = connect(&srv, &fx, VOLUME).await.err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::Protocol), "{e}");
    assert!(e.to_string().contains("busy"), "{e}");
    assert_eq!(srv.status().rejected_busy, 1);
    // Stopping the server ends the idle first session and returns the store.
    let store = srv.stop().await;
    assert!(store.state().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_chunks_with_a_window_of_one() {
    // 3000 chunks of 4 KiB, one in flight at a time.
    let dir = tempfile::tempdir().unwrap();
    let g = bdr_sync::Geometry::new(8, 8 * 3000).unwrap();
    let fx = Fixture { dir, g };
    let mut rng = Rng(29);
    fx.create(&mut rng, 0);
    let srv = Server::start(&fx, ServeOptions::default()).await;
    let mut c = PrimaryConn::connect(
        srv.addr,
        VOLUME,
        g,
        ShipOptions {
            in_flight: 1,
            ..opts()
        },
    )
    .await
    .unwrap();
    let st = c
        .ship_cut(
            image(&fx),
            &all_regions(&g),
            c.next_cut_ids(),
            CutKind::Rescan,
        )
        .await
        .unwrap();
    assert_eq!(st.chunks, 3000);
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "4 KiB regions");
    srv.stop().await;
}

/// A replica that answers the handshake and then stops reading (a stopped or hung
/// process: its kernel keeps the connection open with a zero window) cannot hold a cut:
/// the primary's writes fail after `write_stall_timeout` with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_reading_cannot_hold_the_cut() {
    let fx = Fixture::new(512); // 32 MiB of random data: more than the sockets' buffers
    fx.create(&mut Rng(77), 0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = fx.g;
    let stuck = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let (rd, wr) = sock.into_split();
        let mut r = FrameReader::new(rd);
        let mut w = FrameWriter::new(wr);
        let Frame::Hello { .. } = r.read_frame().await.unwrap() else {
            panic!("no Hello")
        };
        w.write_frame(&Frame::Welcome {
            proto: bdr_sync::PROTO_VERSION,
            volume: None,
            last_cut: None,
            dev_bytes: g.dev_bytes(),
        })
        .await
        .unwrap();
        w.flush().await.unwrap();
        // Never read again; keep the socket open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop((r, w));
    });
    let o = ShipOptions {
        write_stall_timeout: Duration::from_secs(1),
        ..opts()
    };
    let mut c = PrimaryConn::connect(addr, VOLUME, fx.g, o).await.unwrap();
    let t0 = std::time::Instant::now();
    let e = c
        .ship_cut(
            image(&fx),
            &all_regions(&fx.g),
            CutIds {
                cut: 1,
                parent: None,
            },
            CutKind::Rescan,
        )
        .await
        .expect_err("a cut into a replica that reads nothing");
    let waited = t0.elapsed();
    assert!(e.to_string().contains("took no data"), "{e}");
    assert!(waited < Duration::from_secs(10), "held for {waited:?}");
    stuck.abort();
}

/// A commit that fails after its commit point (the device fails its sync) stops the store:
/// the primary is told, the server says why in its status, and the next connection
/// replays the committed journal in place (no restart) and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stopped_by_a_failed_commit_recovers_at_the_next_connection() {
    use bdr_sync::replica::{CommitStep, RecoveryReport};
    use std::sync::atomic::{AtomicBool, Ordering};
    let fx = Fixture::new(8);
    let mut rng = Rng(31);
    fx.create(&mut rng, 0);
    let failing = Arc::new(AtomicBool::new(false));
    let mut store = ReplicaStore::open(&fx.device(), &fx.state_dir()).unwrap();
    let f = failing.clone();
    store.set_step_hook(Some(Box::new(move |step| {
        step == CommitStep::DeviceSynced && f.load(Ordering::SeqCst)
    })));
    let srv = Server::start_store(store, ServeOptions::default()).await;
    seed(&srv, &fx).await;
    let set = scribble(&fx.source(), &fx.g, &mut rng, 5);
    failing.store(true, Ordering::SeqCst);
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    let ids = c.next_cut_ids();
    assert_eq!(ids.cut, 2);
    let e = c
        .ship_cut(image(&fx), &set, ids, CutKind::Incremental)
        .await
        .expect_err("the commit fails after its commit point");
    assert!(e.to_string().contains("DeviceSynced"), "{e}");
    drop(c);
    srv.idle().await;
    let st = srv.status();
    let why = st.store_stopped.expect("the status says the store stopped");
    assert!(why.contains("DeviceSynced"), "{why}");
    assert!(st.recovered_in_place.is_none());

    // The device is back: the next primary's connection replays cut 2 first.
    failing.store(false, Ordering::SeqCst);
    let mut c = connect(&srv, &fx, VOLUME).await.unwrap();
    assert_eq!(
        c.replica().last_cut,
        Some(2),
        "cut 2 was committed: replayed"
    );
    let st = srv.status();
    assert_eq!(st.store_stopped, None);
    match st.recovered_in_place {
        Some((RecoveryReport::Replayed { cut: 2, chunks, .. }, _)) => {
            assert_eq!(chunks, set.len(), "replayed chunks")
        }
        other => panic!("{other:?}"),
    }
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after the replay");
    // And it serves on.
    let set3 = scribble(&fx.source(), &fx.g, &mut rng, 3);
    c.ship_cut(image(&fx), &set3, c.next_cut_ids(), CutKind::Incremental)
        .await
        .unwrap();
    c.close().await;
    srv.idle().await;
    assert_same(&fx.device_bytes(), &fx.source_bytes(), "after cut 3");
    let store = srv.stop().await;
    assert_eq!(store.state().unwrap().last_cut, 3);
}
