//! Connection shards: threads that accept and serve connections, each with a table of open
//! files of its own, so that one relay process holds more sockets than its open-file limit.
//!
//! Linux applies `RLIMIT_NOFILE` to each file-descriptor table, and a thread may leave the
//! table it shares with the rest of its process (`unshare(CLONE_FILES)`) for a copy of its
//! own. Where the limit cannot be raised (a container that drops `CAP_SYS_RESOURCE`), N
//! shards hold nearly N times the limit in one process, with one store, one identity and one
//! port.
//!
//! A descriptor number means something only in the table it was made in. What keeps that
//! sound:
//! - Everything the threads share by number is made before the split: each shard's runtime
//!   (its epoll and the eventfd other threads write to when they wake one of its tasks, such
//!   as the store's writer announcing a message), the runtimes' signal pipe, and the runtime
//!   that then runs the relay, which shards wake for their reads and when they end: it must
//!   exist before [`Relay::bind`](crate::Relay::bind), as it does in the binary.
//! - After the split a shard's sockets are used and closed on its own thread only: it runs a
//!   single-threaded runtime. Its sessions hand writes to the store's writer through a
//!   channel, and run their reads as tasks on the main runtime
//!   ([`Store::reading_on`](crate::store::Store)), so every database connection, file and
//!   worker thread lives in the main table.
//! - The split happens while the relay has opened little else: the store, the admin
//!   listener and pluggable transports open afterwards, in the main table, so no shard holds
//!   a copy that would keep one of them open, or take part in SQLite's file locks (Linux
//!   keeps a POSIX lock per descriptor table, so each table counts as another owner).
//! - Randomness is drawn once before the split, for the same reason: a generator that falls
//!   back from `getrandom(2)` to a device file keeps that file open by number.
//! - A shard closes its inherited copies of the listening socket once it has its own, so the
//!   port closes as soon as the shards stop accepting.
//!
//! The host must allow `unshare(CLONE_FILES)`: Docker's default seccomp profile allows
//! `unshare` only with `CAP_SYS_ADMIN`, and the relay then refuses to start with shards.
//!
//! Every shard's epoll watches the one listening socket, so a new connection wakes each
//! shard's thread and one of them accepts it: a cost per connection, not per message. A few
//! descriptors stay open after the shards stop (the main table's copies of their runtimes'
//! epoll, eventfd and signal pipe), which is harmless for a process about to exit.

use std::{
    net::TcpListener as StdListener,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use nix::sched::{CloneFlags, unshare};
use tokio::sync::{Semaphore, mpsc as async_mpsc, watch};

use crate::{RelayError, server::Serving};

/// More shards than this is a mistake: each costs a thread and a few descriptors in every
/// table.
pub const MAX_SHARDS: usize = 256;

/// Descriptors a shard keeps free beyond its connections: room for what its runtime may open
/// while serving, so that a full shard leaves new connections in the kernel's backlog (for
/// another shard to take) instead of failing to accept them.
const SPARE: usize = 32;

/// Shards split from the process's descriptor table, waiting for what they serve.
pub(crate) struct Shards {
    shards: Vec<Shard>,
    exited: async_mpsc::UnboundedReceiver<usize>,
}

struct Shard {
    start: mpsc::Sender<Start>,
    thread: JoinHandle<()>,
    /// Connections it may hold: its table's room.
    capacity: usize,
}

/// What a shard needs to serve, sent once the store is open.
struct Start {
    serving: Arc<Serving>,
    capacity: usize,
    stop: watch::Receiver<bool>,
}

/// A shard's runtime, shut down without waiting wherever it is dropped: on its own thread
/// once it has served, or on the caller's (inside async code) if setting up shards failed.
struct ShardRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ShardRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Tells the relay a shard's thread ended, however it ended (a panic included).
struct Exit {
    index: usize,
    exited: async_mpsc::UnboundedSender<usize>,
}

impl Drop for Exit {
    fn drop(&mut self) {
        let _ = self.exited.send(self.index);
    }
}

/// Running shards: stopped with [`Running::stop`].
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    exited: async_mpsc::UnboundedReceiver<usize>,
    /// Shards whose thread has not been seen to end.
    running: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Starts `count` threads, each with its own copy of the process's descriptor table,
    /// accepting from `listener` once started. Returns when every one has split, so nothing
    /// the caller opens afterwards is copied into their tables.
    pub(crate) fn split(listener: &StdListener, count: usize) -> Result<Self, RelayError> {
        if count > MAX_SHARDS {
            return Err(setup(format!("{count} shards is more than {MAX_SHARDS}")));
        }
        draw_randomness_before_split()?;
        let shared = Arc::new(listener.try_clone().map_err(|e| setup(format!("listener: {e}")))?);
        // Numbers each shard's table inherits and closes once it has a listener of its own.
        let inherited = [listener.as_raw_fd(), shared.as_raw_fd()];
        // Every runtime is built before the first split, so each one's descriptors mean the
        // same in every table: a session ending on one shard may wake another's accept loop.
        let mut runtimes = Vec::with_capacity(count);
        for _ in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtimes.push(ShardRuntime(Some(runtime.map_err(|e| setup(format!("runtime: {e}")))?)));
        }
        let (exited_tx, exited) = async_mpsc::unbounded_channel();
        let mut shards = Vec::with_capacity(count);
        for (index, runtime) in runtimes.into_iter().enumerate() {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
            let (start_tx, start_rx) = mpsc::channel::<Start>();
            let (shared, exit) = (shared.clone(), Exit { index, exited: exited_tx.clone() });
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    let _exit = exit;
                    let ready = own_table(index, &shared, inherited);
                    drop(shared);
                    let (listener, room) = match ready {
                        Ok(ready) => ready,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(room));
                    let Ok(start) = start_rx.recv() else { return };
                    serve_shard(&runtime, index, listener, start);
                    // Its sockets are closed here, on its own thread, in its own table.
                    drop(runtime);
                })
                .map_err(|e| setup(format!("thread: {e}")))?;
            let capacity = ready_rx
                .recv()
                .map_err(|_| setup(format!("shard {index} ended before it was ready")))?
                .map_err(setup)?;
            shards.push(Shard { start: start_tx, thread, capacity });
        }
        Ok(Self { shards, exited })
    }

    /// Connections all shards together may hold.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.capacity).sum()
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// Has every shard accept and serve connections with `serving`.
    pub(crate) fn start(self, serving: &Arc<Serving>) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let running = self.shards.len();
        let mut threads = Vec::new();
        for shard in self.shards {
            let start = Start { serving: serving.clone(), capacity: shard.capacity, stop: stop_rx.clone() };
            // A shard that is gone has reported its exit already.
            let _ = shard.start.send(start);
            threads.push(shard.thread);
        }
        Running { stop, exited: self.exited, running, threads }
    }
}

impl Running {
    /// Resolves when a shard stops before it was told to (it panicked, or could not listen),
    /// with its index.
    pub(crate) async fn stopped_early(&mut self) -> Option<usize> {
        let index = self.exited.recv().await?;
        self.running -= 1;
        Some(index)
    }

    /// Stops accepting, lets sessions finish for a moment, and returns once every shard has
    /// dropped its connections and its handles to the store; with the index of a shard that
    /// had already stopped on its own, if one had.
    pub(crate) async fn stop(mut self) -> Option<usize> {
        let early = self.exited.try_recv().ok();
        if early.is_some() {
            self.running -= 1;
        }
        let _ = self.stop.send(true);
        while self.running > 0 && self.exited.recv().await.is_some() {
            self.running -= 1;
        }
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        early
    }
}

/// On a shard's thread: leaves the shared descriptor table, takes a listener of its own and
/// closes the inherited copies of the relay's, and says how many connections fit.
fn own_table(index: usize, shared: &StdListener, inherited: [RawFd; 2]) -> Result<(StdListener, usize), String> {
    unshare(CloneFlags::CLONE_FILES).map_err(|e| format!("cannot give shard {index} its own descriptor table: {e}"))?;
    let listener = shared.try_clone().map_err(|e| format!("listener: {e}"))?;
    // These numbers, in this table only, are copies nothing here owns: the main thread
    // closes its own, and the shared one is dropped there too.
    for fd in inherited {
        let _ = nix::unistd::close(fd);
    }
    let room = room_in_table()?;
    if room == 0 {
        return Err(format!(
            "shard {index} has no room for connections: raise the open-file limit or use fewer shards"
        ));
    }
    Ok((listener, room))
}

/// One shard's life once started: its accept loop on its own runtime, on its own thread.
fn serve_shard(runtime: &ShardRuntime, index: usize, listener: StdListener, start: Start) {
    let Start { serving, capacity, mut stop } = start;
    let Some(runtime) = &runtime.0 else { return };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(shard = index, error = %e, "shard cannot listen");
                return;
            }
        };
        let room = Arc::new(Semaphore::new(capacity));
        // Stopped when told to, or when the relay is gone.
        let stopped = async move {
            let _ = stop.wait_for(|&stopping| stopping).await;
        };
        crate::server::serve(listener, &serving, Some((index, room)), stopped).await;
    });
}

/// Lets the relay use every descriptor its hard limit allows: the soft limit is often 1,024,
/// and raising it up to the hard one needs no privilege. Best effort.
pub(crate) fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Connections the calling thread's table has room for: the open-file limit less what is
/// open in it now and the spare.
pub(crate) fn room_in_table() -> Result<usize, String> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("open-file limit: {e}"))?;
    // This thread's own table (`/proc/self/fd` would show the main thread's); the listing's
    // own descriptor is counted too, which errs on the safe side.
    let open = std::fs::read_dir("/proc/thread-self/fd").map_err(|e| format!("/proc/thread-self/fd: {e}"))?.count();
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    Ok(soft.saturating_sub(open).saturating_sub(SPARE))
}

/// Draws from the random generators the relay's serving path uses before any shard leaves
/// the shared table: rand's `OsRng` (through getrandom 0.2, shared with ring and ed25519) and
/// the TLS provider's (aws-lc). Where `getrandom(2)` is missing, each falls back to a device
/// file it opens on first use and keeps by number; opened now, that number means the same
/// file in every shard's copy of the table. A generator the relay starts using elsewhere
/// (getrandom 0.3 is in the build, for the WebSocket library's client side) belongs here too.
fn draw_randomness_before_split() -> Result<(), RelayError> {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| setup(format!("no randomness: {e}")))?;
    tamizdat_transport::tls::getrandom(&mut bytes).map_err(|e| setup(e.to_string()))
}

fn setup(reason: String) -> RelayError {
    RelayError::Shards(reason)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn running_one(thread: impl FnOnce(Exit) + Send + 'static) -> Running {
        let (exited_tx, exited) = async_mpsc::unbounded_channel();
        let exit = Exit { index: 3, exited: exited_tx };
        let thread = std::thread::spawn(move || thread(exit));
        Running { stop: watch::channel(false).0, exited, running: 1, threads: vec![thread] }
    }

    #[tokio::test]
    async fn a_shard_that_ends_early_is_reported_then_stopped() {
        let mut running = running_one(drop);
        assert_eq!(running.stopped_early().await, Some(3));
        assert_eq!(running.stop().await, None, "already reported");
    }

    #[tokio::test]
    async fn a_shard_that_panics_is_reported_even_at_shutdown() {
        let running = running_one(|exit| {
            let _exit = exit;
            panic!("a shard fails");
        });
        // Wait until its exit is queued, as if shutdown came in the same wake-up.
        while running.exited.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(running.stop().await, Some(3));
    }
}
