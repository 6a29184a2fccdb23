//! The relay process: listener, front door, sessions, retention, graceful shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tamizdat_transport::server::{Accepted, FrontDoor};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

use crate::{
    RelayError, cover, current_hour,
    identity::RelayIdentity,
    limits::{AddressLimiter, Limits},
    metrics::{self, Metrics},
    session,
    shards::{self, Shards},
    store::{Store, StoreLocation, Write},
};

/// Default retention of undelivered entries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(21 * 24 * 3600);
/// How long shutdown waits for sessions to finish what they are doing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Data directory (keys and database).
    pub data: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Endpoints to advertise; empty keeps what the data directory has, or uses the bound
    /// address.
    pub public: Vec<String>,
    /// How long undelivered entries are kept.
    pub retention: Duration,
    /// Where data lives; `None` is the embedded SQLite file in the data directory.
    pub store: Option<StoreLocation>,
    /// When a write counts as stored.
    pub durability: crate::store::Durability,
    /// Abuse limits.
    pub limits: Limits,
    /// Where to serve Prometheus metrics (`GET /metrics`); keep it private.
    pub admin: Option<SocketAddr>,
    /// Threads that accept and serve connections, each with its own table of open files, for
    /// hosts where the open-file limit cannot be raised: each shard holds up to the limit
    /// less what every table holds (stdio, the runtimes' few descriptors, a spare of 32), and
    /// `max_connections` still caps the total. 0 or 1 serves from the main runtime. With
    /// shards, whatever the process opened before [`Relay::bind`] stays open in every shard's
    /// table until the relay stops, and binding raises the process's soft open-file limit to
    /// its hard one (it does that in any case). [`Relay::run`] must then run on a runtime
    /// built before `bind`: shards wake it by a descriptor number their tables must share.
    pub shards: usize,
}

/// A relay bound to its address, ready to serve.
pub struct Relay {
    /// Non-blocking; registered with a runtime only where it is accepted from.
    listener: std::net::TcpListener,
    identity: RelayIdentity,
    config: RelayConfig,
    /// Split from the process's descriptor table at bind time, when `config.shards` > 1.
    shards: Option<Shards>,
}

impl Relay {
    /// Binds the listener, loads or creates the relay's identity and, with several shards,
    /// starts their threads (before anything else opens files; see the `shards` module).
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        shards::raise_open_file_limit();
        let listen_error = listen_error(config.listen);
        let listener = TcpListener::bind(config.listen).await.and_then(TcpListener::into_std).map_err(&listen_error)?;
        let local = listener.local_addr().map_err(&listen_error)?;
        let identity = RelayIdentity::load_or_create(&config.data, &config.public, &advertised(local))?;
        let shards = match config.shards {
            0 | 1 => None,
            n => Some(Shards::split(&listener, n)?),
        };
        if let Some(shards) = &shards {
            // Before the admin listener opens, so every scrape shows them.
            metrics::global()
                .shard_connections_open
                .get_or_init(|| (0..shards.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
        }
        let room = match &shards {
            Some(s) => s.capacity(),
            None => shards::room_in_table().unwrap_or(usize::MAX),
        };
        tracing::info!(shards = config.shards.max(1), room, "connections: room in the open-file tables");
        if room < config.limits.max_connections {
            tracing::warn!(
                max_connections = config.limits.max_connections,
                room,
                "the open-file limit leaves room for fewer connections than max_connections; raise it (ulimit -n) \
                 or serve from more shards"
            );
        }
        Ok(Self { listener, identity, config, shards })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The relay link clients use.
    pub fn link(&self) -> String {
        self.identity.link()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets sessions finish for a
    /// moment, and returns once every acknowledged write is committed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let location =
            self.config.store.clone().unwrap_or_else(|| StoreLocation::Sqlite(self.config.data.join("relay.db")));
        let (store, writer) = Store::open_with(&location, self.config.durability).await?;
        tracing::info!(store = %location.describe(), "store open");
        let door = Arc::new(FrontDoor::new(
            self.identity.cert.server_config()?,
            self.identity.descriptor().door_path(),
            Arc::new(cover::default_site()),
        ));
        let retention_hours = i64::try_from(self.config.retention.as_secs() / 3600).unwrap_or(i64::MAX);
        let expiry = tokio::spawn(expire_loop(store.clone(), retention_hours));
        let admin = match self.config.admin {
            Some(addr) => Some(metrics::serve_admin(addr).await?),
            None => None,
        };
        let mut serving = Serving {
            door,
            store: store.clone(),
            limits: Arc::new(self.config.limits.clone()),
            addresses: AddressLimiter::new(self.config.limits.clone()),
            permits: Arc::new(Semaphore::new(self.config.limits.max_connections.max(1))),
        };
        tracing::info!("relay serving");
        let shutdown = async {
            shutdown.await;
            tracing::info!("relay stopping");
        };
        let mut failure = None;
        match self.shards {
            None => {
                let listener = TcpListener::from_std(self.listener).map_err(listen_error(self.config.listen))?;
                serve(listener, &serving, None, shutdown).await;
                // Its store handle too must be gone before the writer can finish.
                drop(serving);
            }
            Some(shards) => {
                // Shards read on this runtime, whose descriptor table holds the pool's connections.
                serving.store = serving.store.reading_on(tokio::runtime::Handle::current());
                let mut running = shards.start(&Arc::new(serving));
                // The shards accept from listeners of their own.
                drop(self.listener);
                let early = tokio::select! {
                    biased;
                    Some(index) = running.stopped_early() => Some(index),
                    () = shutdown => None,
                };
                let stopped_before = running.stop().await;
                if let Some(index) = early.or(stopped_before) {
                    tracing::error!(shard = index, "a connection shard stopped unexpectedly; the relay stopped");
                    failure = Some(RelayError::Shards(format!("shard {index} stopped unexpectedly")));
                }
            }
        }
        expiry.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        drop(store);
        writer.finished().await;
        tracing::info!("relay stopped; all acknowledged writes are on disk");
        failure.map_or(Ok(()), Err)
    }
}

fn listen_error(addr: SocketAddr) -> impl Fn(std::io::Error) -> RelayError {
    move |e| RelayError::Listen { addr: addr.to_string(), reason: e.to_string() }
}

/// What every connection needs, shared by every thread that accepts.
pub(crate) struct Serving {
    door: Arc<FrontDoor>,
    store: Store,
    limits: Arc<Limits>,
    addresses: AddressLimiter,
    /// The relay's connection limit, over all shards.
    permits: Arc<Semaphore>,
}

/// Accepts and serves connections until `stop` resolves, then stops accepting and lets
/// sessions finish for a moment. On a shard, `shard` is its index and its table's room for
/// connections: a full shard stops accepting, and the kernel's backlog waits for another.
pub(crate) async fn serve(
    listener: TcpListener,
    serving: &Serving,
    shard: Option<(usize, Arc<Semaphore>)>,
    stop: impl Future<Output = ()>,
) {
    let m = metrics::global();
    let shard_gauge = shard.as_ref().and_then(|(i, _)| m.shard_connections_open.get()?.get(*i));
    let mut sessions = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let room = match &shard {
            None => None,
            Some((_, room)) => tokio::select! {
                _ = &mut stop => break,
                p = room.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => break },
            },
        };
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = serving.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        Metrics::inc(&m.connections_total);
        // Over its limits, an address gets its connection closed before any TLS work.
        let Some(address_permit) = serving.addresses.admit(peer.ip()) else {
            Metrics::inc(&m.connections_refused_total);
            drop(tcp);
            continue;
        };
        let (door, store, limits) = (serving.door.clone(), serving.store.clone(), serving.limits.clone());
        let counted = shard_gauge.map(Metrics::hold);
        sessions.spawn(async move {
            let _held = (room, permit, address_permit, counted);
            serve_connection(door, tcp, store, limits).await;
        });
        while sessions.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while sessions.join_next().await.is_some() {} }).await;
    sessions.shutdown().await;
}

/// One accepted connection: the front door, then a protocol session if it asked for one.
///
/// The front door's handshake and HTTP state live in their own allocation, freed when the
/// session starts: inline, the task would keep room for them (6.1 KiB) for as long as it
/// holds an idle session.
async fn serve_connection(door: Arc<FrontDoor>, tcp: TcpStream, store: Store, limits: Arc<Limits>) {
    let m = metrics::global();
    let _open = Metrics::hold(&m.connections_open);
    match Box::pin(door.accept(tcp)).await {
        Ok(Accepted::Protocol(ws)) => {
            Metrics::inc(&m.sessions_total);
            let _session = Metrics::hold(&m.sessions_open);
            session::run(ws, store, &limits).await;
        }
        _ => Metrics::inc(&m.cover_connections_total),
    }
}

/// An address clients can use when none was given: the bound one, with loopback standing in
/// for "all interfaces".
fn advertised(local: SocketAddr) -> String {
    let ip = if local.ip().is_unspecified() {
        if local.is_ipv4() { "127.0.0.1".parse().ok() } else { "::1".parse().ok() }
    } else {
        Some(local.ip())
    };
    SocketAddr::new(ip.unwrap_or(local.ip()), local.port()).to_string()
}

async fn expire_loop(store: Store, retention_hours: i64) {
    loop {
        let before_hour = current_hour().saturating_sub(retention_hours);
        if let Err(e) = store.write(Write::Expire { before_hour }).await {
            tracing::warn!(error = %e, "retention pass failed");
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// What one idle connection's task holds inline, whatever state it is in: every held
    /// connection pays it.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("relay.db"));
        let (store, _writer) = Store::open_with(&location, crate::store::Durability::Fsync).await.unwrap();
        let identity = RelayIdentity::load_or_create(dir.path(), &[], "127.0.0.1:443").unwrap();
        let door = Arc::new(FrontDoor::new(
            identity.cert.server_config().unwrap(),
            identity.descriptor().door_path(),
            Arc::new(cover::default_site()),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let task = serve_connection(door.clone(), tcp, store, Arc::new(Limits::default()));
        let size = std::mem::size_of_val(&task);
        let stream = std::mem::size_of::<tamizdat_transport::server::ServerWs>();
        let door_size = accept_size(&door).await;
        eprintln!(
            "connection task: {size} bytes inline; the TLS + WebSocket stream {stream} (boxed); front door {door_size}"
        );
        // Neither the front door's state nor a copy of the stream: only the session's own.
        assert!(size < door_size.min(stream) + 512, "a connection task takes {size} bytes");
    }

    async fn accept_size(door: &FrontDoor) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        std::mem::size_of_val(&door.accept(tcp))
    }
}
