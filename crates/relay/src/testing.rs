//! Test databases for the conformance suite: a temporary SQLite file, or a fresh database on
//! the PostgreSQL server (`TAMIZDAT_TEST_POSTGRES`, default the local `test` database). An
//! unreachable PostgreSQL fails the tests: the suite never skips a backend.
//! Only built with the `testing` feature; it panics on failure, as tests want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::{AnyConnection, AssertSqlSafe, Connection};

use crate::store::{Store, StoreLocation, WriterTask};

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// An embedded SQLite file.
    Sqlite,
    /// A fresh database on the PostgreSQL server.
    Postgres,
}

/// A database that exists for one test.
pub struct TestDb {
    /// Where it is.
    pub location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TAMIZDAT_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin() -> AnyConnection {
    sqlx::any::install_default_drivers();
    let url = postgres_admin_url();
    AnyConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is unreachable at {url} ({e}); the PostgreSQL conformance suite must run, set TAMIZDAT_TEST_POSTGRES")
    })
}

impl TestDb {
    /// Creates an empty database of this kind.
    pub async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                TestDb { location: StoreLocation::Sqlite(dir.path().join("relay.db")), _dir: Some(dir), pg_name: None }
            }
            Kind::Postgres => {
                let name = format!("tamizdat_t_{:016x}", rand::random::<u64>());
                let mut conn = admin().await;
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
                let base = postgres_admin_url();
                let (prefix, _) = base.rsplit_once('/').unwrap();
                TestDb {
                    location: StoreLocation::Postgres(format!("{prefix}/{name}")),
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// Opens it as a relay node would.
    pub async fn open(&self) -> (Store, WriterTask) {
        Store::open(&self.location).await.unwrap()
    }

    /// The location as `tamizdat relay serve --store` takes it.
    pub fn store_arg(&self) -> String {
        match &self.location {
            StoreLocation::Sqlite(p) => p.display().to_string(),
            StoreLocation::Postgres(url) => url.clone(),
        }
    }

    /// Drops the PostgreSQL database (a SQLite directory goes with the value).
    pub async fn finish(self) {
        if let Some(name) = &self.pg_name {
            let mut conn = admin().await;
            sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// A message the relay takes as MLS (group id "gid", `epoch`, `content_type`: 1 application,
/// 3 commit), with 40 bytes of `filler` as its body.
pub fn mls_message(epoch: u64, content_type: u8, filler: u8) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, 3, b'g', b'i', b'd'];
    m.extend_from_slice(&epoch.to_be_bytes());
    m.push(content_type);
    m.extend_from_slice(&[filler; 40]);
    m
}

/// A relay on a loopback port with its embedded store under `dir`, served until the test's
/// runtime ends. Its descriptor lists only the bound address.
pub async fn spawn_relay(dir: &std::path::Path) -> (tamizdat_wire::proto::RelayDescriptor, std::net::SocketAddr) {
    spawn_relay_with(dir, Default::default()).await
}

/// [`spawn_relay`] with other limits.
pub async fn spawn_relay_with(
    dir: &std::path::Path,
    limits: crate::Limits,
) -> (tamizdat_wire::proto::RelayDescriptor, std::net::SocketAddr) {
    let config = crate::RelayConfig {
        data: dir.join("relay"),
        listen: "127.0.0.1:0".parse().unwrap(),
        public: vec![],
        retention: std::time::Duration::from_secs(86_400),
        store: None,
        limits,
        durability: Default::default(),
        admin: None,
        shards: 1,
    };
    let relay = crate::Relay::bind(config).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let mut descriptor = tamizdat_wire::proto::RelayDescriptor::from_link(&relay.link()).unwrap();
    descriptor.endpoints = vec![addr.to_string()];
    tokio::spawn(relay.run(std::future::pending()));
    (descriptor, addr)
}
