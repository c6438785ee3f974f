//! [`serve`]: the replica's TCP server, one primary session at a time.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{RecoveryReport, ReplicaSession, ReplicaStore};
use crate::frame::{ErrorCode, Frame, FrameError, FrameReader, FrameWriter};

/// Timeouts of the replica server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Longest wait for the Hello of a new connection.
    pub hello_timeout: Duration,
    /// Longest silence inside a cut: a cut that stops progressing for this long is
    /// discarded and the connection closed.
    pub cut_timeout: Duration,
    /// Longest silence between cuts before the connection is closed (the primary reconnects).
    pub idle_timeout: Duration,
    /// How long to keep reading (and dropping) the primary's frames after sending it an
    /// Error, so it can read the error before the connection is reset.
    pub linger: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            hello_timeout: Duration::from_secs(10),
            cut_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            linger: Duration::from_secs(2),
        }
    }
}

/// The last error of the server, for `bdr status`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorRecord {
    pub at: SystemTime,
    pub peer: Option<SocketAddr>,
    pub code: ErrorCode,
    pub message: String,
}

/// What the server is doing, shared with the CLI through a [`StatusHandle`].
#[derive(Clone, Default, Debug)]
pub struct ServeStatus {
    /// The primary being served.
    pub peer: Option<SocketAddr>,
    /// Sessions accepted so far.
    pub sessions: u64,
    /// Connections turned away because a session was active.
    pub rejected_busy: u64,
    /// The cut being received.
    pub in_cut: Option<u64>,
    /// Last cut committed by this server, and when.
    pub last_committed: Option<(u64, SystemTime)>,
    /// Cuts committed by this server.
    pub commits: u64,
    pub last_error: Option<ErrorRecord>,
    /// Why the store is stopped (a commit failed after its commit point): it replays its
    /// journal at the next connection. `None` while it serves.
    pub store_stopped: Option<String>,
    /// The last recovery of a stopped store in place, and when.
    pub recovered_in_place: Option<(RecoveryReport, SystemTime)>,
}

pub type StatusHandle = Arc<Mutex<ServeStatus>>;

fn record_error(status: &StatusHandle, peer: Option<SocketAddr>, code: ErrorCode, message: String) {
    tracing::warn!(?peer, %code, %message, "replica session error");
    status.lock().unwrap().last_error = Some(ErrorRecord {
        at: SystemTime::now(),
        peer,
        code,
        message,
    });
}

/// Reads and drops whatever the peer still sends, for at most `limit` or until it closes.
async fn drain<R: AsyncRead + Unpin>(mut r: R, limit: Duration) {
    let mut buf = vec![0u8; 64 << 10];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Sends `frame` (an Error), closes the write side, and lingers so the peer reads it.
async fn send_error_and_close(sock: TcpStream, frame: Frame, linger: Duration) {
    let (rd, wr) = sock.into_split();
    let mut w = FrameWriter::new(wr);
    let _ = w.write_frame(&frame).await;
    let _ = w.shutdown().await;
    drain(rd, linger).await;
}

/// Serves primaries on `listener` with `store` until `shutdown` completes, one session at
/// a time; another connection meanwhile gets `Error{Protocol, "busy ..."}`. Returns the
/// store when stopped (an open cut is discarded; a commit in progress finishes first).
pub async fn serve<F>(
    listener: TcpListener,
    store: ReplicaStore,
    opts: ServeOptions,
    status: StatusHandle,
    shutdown: F,
) -> io::Result<ReplicaStore>
where
    F: Future<Output = ()>,
{
    let slot = Arc::new(Mutex::new(Some(store)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut active: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => {
                let (sock, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let taken = slot.lock().unwrap().take();
                match taken {
                    Some(store) => {
                        status.lock().unwrap().sessions += 1;
                        active = Some(tokio::spawn(run_session(
                            sock, peer, store, slot.clone(), opts.clone(), status.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    None => {
                        let busy_with = status.lock().unwrap().peer;
                        status.lock().unwrap().rejected_busy += 1;
                        let msg = format!(
                            "busy: this replica is serving another primary ({}); only one \
                             primary may replicate to it at a time",
                            busy_with.map_or("?".to_string(), |p| p.to_string())
                        );
                        tracing::warn!(%peer, "{msg}");
                        tokio::spawn(send_error_and_close(
                            sock, Frame::error(ErrorCode::Protocol, msg), opts.linger,
                        ));
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(h) = active {
        let _ = h.await;
    }
    let store = slot.lock().unwrap().take();
    store.ok_or_else(|| io::Error::other("the replica store was lost: a session task panicked"))
}

async fn run_session(
    sock: TcpStream,
    peer: SocketAddr,
    store: ReplicaStore,
    slot: Arc<Mutex<Option<ReplicaStore>>>,
    opts: ServeOptions,
    status: StatusHandle,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(%peer, "primary connected");
    status.lock().unwrap().peer = Some(peer);
    let (rd, wr) = sock.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    let store = if store.is_stopped() {
        // A failed commit stopped it: recover as a restart would (at most every few
        // seconds; see retry_recovery). Refused below, with the reason, if that fails.
        let joined = tokio::task::spawn_blocking(move || {
            let mut store = store;
            let r = store.retry_recovery();
            (store, r)
        })
        .await;
        match joined {
            Ok((store, Ok(r))) => {
                tracing::info!(%peer, recovery = ?r, "replica store recovered after a failed commit");
                let mut st = status.lock().unwrap();
                st.store_stopped = None;
                st.recovered_in_place = Some((r, SystemTime::now()));
                drop(st);
                store
            }
            Ok((store, Err(e))) => {
                tracing::warn!(%peer, error = %e, "replica store still stopped");
                status.lock().unwrap().store_stopped = Some(e.to_string());
                store
            }
            Err(e) => {
                record_error(
                    &status,
                    Some(peer),
                    ErrorCode::Io,
                    format!("replica recovery task failed: {e}"),
                );
                return; // the store is lost with the panicked task
            }
        }
    } else {
        store
    };
    let mut session = Some(ReplicaSession::new(store));
    let mut hello_seen = false;
    // The error to send before closing, if any.
    let mut fail: Option<Frame> = None;
    loop {
        let s = session.as_ref().expect("session");
        let in_cut = s.in_cut();
        let limit = match (hello_seen, in_cut) {
            (false, _) => opts.hello_timeout,
            (true, Some(_)) => opts.cut_timeout,
            (true, None) => opts.idle_timeout,
        };
        let next = tokio::select! {
            r = reader.read_frame_timeout(limit) => r,
            _ = stop.changed() => {
                tracing::info!(%peer, "replica stopping: closing the session");
                break;
            }
        };
        let frame = match next {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                if let Some(cut) = in_cut {
                    record_error(
                        &status,
                        Some(peer),
                        ErrorCode::Protocol,
                        format!(
                            "the primary closed the connection in the middle of cut {cut}: cut \
                             discarded, the replica stays at its last committed cut"
                        ),
                    );
                } else {
                    tracing::info!(%peer, "primary disconnected");
                }
                break;
            }
            Err(e) => {
                let what = match (&e, in_cut) {
                    (FrameError::Timeout(d), Some(cut)) => format!(
                        "cut {cut} made no progress for {d:?}: cut discarded, the replica stays \
                         at its last committed cut"
                    ),
                    (FrameError::Timeout(d), None) => {
                        format!("no frame from the primary for {d:?}: closing the connection")
                    }
                    (_, Some(cut)) => {
                        format!("bad input from the primary in cut {cut}: {e}; cut discarded")
                    }
                    (_, None) => format!("bad input from the primary: {e}"),
                };
                record_error(&status, Some(peer), e.code(), what.clone());
                fail = Some(Frame::error(e.code(), what));
                break;
            }
        };
        if matches!(frame, Frame::Hello { .. }) {
            hello_seen = true;
        }
        let mut s = session.take().expect("session");
        let joined = tokio::task::spawn_blocking(move || {
            let r = s.on_frame(frame);
            (s, r)
        })
        .await;
        let (s, res) = match joined {
            Ok(x) => x,
            Err(e) => {
                record_error(
                    &status,
                    Some(peer),
                    ErrorCode::Io,
                    format!("replica session task failed: {e}"),
                );
                return; // the store is lost with the panicked task
            }
        };
        session = Some(s);
        match res {
            Ok(replies) => {
                for f in &replies {
                    if let Frame::Committed { cut } = f {
                        let mut st = status.lock().unwrap();
                        st.last_committed = Some((*cut, SystemTime::now()));
                        st.commits += 1;
                    }
                }
                status.lock().unwrap().in_cut = session.as_ref().and_then(|s| s.in_cut());
                let mut ok = true;
                for f in &replies {
                    if let Err(e) = writer.write_frame(f).await {
                        tracing::warn!(%peer, error = %e, "cannot reply to the primary");
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
            Err(e) => {
                record_error(&status, Some(peer), e.code, e.message.clone());
                fail = Some(e.to_frame());
                break;
            }
        }
    }
    let mut s = session.take().expect("session");
    s.abort();
    {
        let mut st = status.lock().unwrap();
        st.in_cut = None;
        st.peer = None;
    }
    let store = s.into_store();
    if let Some(why) = store.stopped_reason() {
        tracing::warn!(
            %peer,
            reason = why,
            "replica store stopped after a failed commit: it replays its journal at the next connection"
        );
        status.lock().unwrap().store_stopped = Some(why.to_string());
    }
    // Give the store back before lingering, so the next primary can connect at once.
    *slot.lock().unwrap() = Some(store);
    if let Some(f) = fail {
        let _ = writer.write_frame(&f).await;
        let _ = writer.shutdown().await;
        drain(reader.into_inner(), opts.linger).await;
    }
}
