//! Ways to the relays: which endpoints a relay has, which one worked last on this network,
//! whether this network freezes busy connections, and the doctor.
//!
//! A relay is identified by its certificate pin; every endpoint any of its links lists, or
//! that the user added (a bridge, a pluggable-transport bridge line), is a way to the same
//! relay, because the pin proves who answers. So links are merged, not replaced.

use std::{path::Path, sync::Arc};

use tamizdat_transport::{
    TransportError,
    diagnose::{self, Report},
    dial::Dialer,
    endpoint::Endpoint,
    network,
    proxy::Proxy,
};
use tamizdat_wire::proto::RelayDescriptor;

use crate::{ClientError, engine::Client, relay::RelayClient};

/// With a freeze seen on this network, a connection is replaced before it has received this
/// many bytes, so the next reply never crosses a ~16 KB freeze.
pub const FREEZE_BUDGET: u64 = 9 * 1024;
/// With a freeze seen, reads ask for at most this many payload bytes per reply.
pub const FREEZE_READ_BYTES: u32 = 2048;
/// How long a seen freeze is remembered for a network.
const FREEZE_MEMORY_SECS: i64 = 7 * 86_400;

/// How this device reaches relays.
#[derive(Clone, Debug, Default)]
pub struct NetOptions {
    /// Every connection through this proxy (overrides the `proxy` setting).
    pub proxy: Option<Proxy>,
}

/// The dialer and what is known about the current network.
pub(crate) struct Net {
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) network: String,
    pub(crate) freeze: bool,
}

impl Net {
    pub(crate) fn new(home: &Path, proxy: Option<Proxy>) -> Result<Self, ClientError> {
        let mut dialer = Dialer::from_env(home.join("pt-state"))?;
        dialer.proxy = proxy;
        Ok(Self { dialer: Arc::new(dialer), network: network::current_id(), freeze: false })
    }
}

/// One known endpoint of a relay, for `tamizdat relay list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointView {
    /// The endpoint.
    pub endpoint: String,
    /// `ip`, `domain` or `pt`.
    pub kind: &'static str,
    /// Where it came from: the relay link, or added by hand.
    pub source: &'static str,
    /// Unix seconds it last worked on this network.
    pub last_ok: Option<u64>,
}

/// How this device reaches its relay right now, for a status line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnectionStatus {
    /// `direct`, `bridge` (an endpoint learned from a bridge link), `proxy`, `pt` (a pluggable
    /// transport) or `offline`.
    pub route: &'static str,
    /// The endpoint in use.
    pub endpoint: Option<String>,
    /// What is wrong, when something is: the last failure to reach the relay (blocked by the
    /// network, or unreachable).
    pub problem: Option<String>,
    /// The failure looked like interference (DNS tampering, resets, a certificate that is not
    /// the relay's).
    pub blocked: bool,
    /// This network freezes busy connections, so connections are kept small.
    pub freezes: bool,
}

impl Client {
    /// How the own relay is reached right now.
    pub fn connection_status(&self) -> ConnectionStatus {
        let own = &self.profile.relay;
        let endpoint = self.relays.get(&own.to_link()).map(|rc| rc.endpoint().to_string());
        let route = match &endpoint {
            None => "offline",
            Some(_) if self.net.dialer.proxy.is_some() => "proxy",
            Some(e) if e.parse::<Endpoint>().is_ok_and(|p| p.kind() == "pt") => "pt",
            Some(e) if own.endpoints.contains(e) => "direct",
            Some(_) => "bridge",
        };
        ConnectionStatus {
            route,
            endpoint,
            blocked: self.last_failure.as_ref().is_some_and(|(kind, _)| *kind == crate::ErrorKind::Blocked),
            problem: self.last_failure.as_ref().map(|(_, m)| m.clone()),
            freezes: self.net.freeze,
        }
    }

    /// Every endpoint of `relay`, best first: what worked on this network (most recent first),
    /// then endpoints added by hand (newest first: they were added because something did not
    /// work), then the link's own; pluggable transports after direct ways within each group.
    pub(crate) fn endpoints_for(&self, relay: &RelayDescriptor) -> Result<Vec<Endpoint>, ClientError> {
        let column = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<Vec<String>, ClientError> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params, |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let added = column(
            "SELECT endpoint FROM relay_endpoints WHERE relay_pin = ?1 ORDER BY added_at DESC",
            &[&relay.cert_sha256],
        )?;
        let worked = column(
            "SELECT endpoint FROM paths WHERE relay_pin = ?1 AND network = ?2 ORDER BY last_ok DESC",
            &[&relay.cert_sha256, &self.net.network],
        )?;
        let known: Vec<Endpoint> = added.iter().chain(&relay.endpoints).filter_map(|e| e.parse().ok()).collect();
        let mut ordered: Vec<Endpoint> = Vec::with_capacity(known.len());
        let worked = worked.iter().filter_map(|w| known.iter().find(|k| k.to_string() == *w));
        let direct = known.iter().filter(|e| !matches!(e, Endpoint::Pt(_)));
        let pt = known.iter().filter(|e| matches!(e, Endpoint::Pt(_)));
        for e in worked.chain(direct).chain(pt) {
            if !ordered.contains(e) {
                ordered.push(e.clone());
            }
        }
        Ok(ordered)
    }

    /// Opens a connection to `relay` the best way known, and remembers which way worked.
    pub(crate) async fn open_relay(&mut self, relay: &RelayDescriptor) -> Result<RelayClient, ClientError> {
        let endpoints = self.endpoints_for(relay)?;
        let rc = RelayClient::connect_with(&self.net.dialer, relay, &endpoints).await?;
        self.conn.execute(
            "INSERT INTO paths (relay_pin, network, endpoint, last_ok) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (relay_pin, network, endpoint) DO UPDATE SET last_ok = excluded.last_ok",
            rusqlite::params![&relay.cert_sha256, &self.net.network, rc.endpoint(), now()],
        )?;
        Ok(rc)
    }

    /// Loads what is known about the current network.
    pub(crate) fn load_network(&mut self) -> Result<(), ClientError> {
        let seen: Option<i64> = self
            .conn
            .query_row("SELECT freeze_seen FROM networks WHERE network = ?1", [&self.net.network], |r| r.get(0))
            .ok()
            .flatten();
        self.net.freeze = seen.is_some_and(|t| now() - t < FREEZE_MEMORY_SECS);
        Ok(())
    }

    /// Remembers that this network freezes busy connections: from now on connections stay small.
    pub(crate) fn note_freeze(&mut self) -> Result<(), ClientError> {
        if !self.net.freeze {
            tracing::info!("a connection froze: keeping connections small on this network from now on");
        }
        self.net.freeze = true;
        self.conn.execute(
            "INSERT INTO networks (network, freeze_seen) VALUES (?1, ?2)
             ON CONFLICT (network) DO UPDATE SET freeze_seen = excluded.freeze_seen",
            rusqlite::params![&self.net.network, now()],
        )?;
        Ok(())
    }

    /// Whether a connection should be replaced before the next request (freeze mode).
    pub(crate) fn connection_spent(&self, rc: &RelayClient) -> bool {
        self.net.freeze && rc.received() > FREEZE_BUDGET
    }

    /// The reply size to ask for in reads: small on a freezing network, the relay's default
    /// otherwise.
    pub(crate) fn read_bytes(&self) -> u32 {
        if self.net.freeze { FREEZE_READ_BYTES } else { 0 }
    }

    /// Learns the endpoints of a relay link (a bridge, a PT bridge line, a domain) for a relay
    /// this identity already uses. Returns the endpoints that were new.
    pub fn add_relay_link(&mut self, link: &str) -> Result<Vec<String>, ClientError> {
        let relay = RelayDescriptor::from_link(link).map_err(|e| ClientError::BadInput(format!("relay link: {e}")))?;
        if !self.known_relays()?.iter().any(|r| r.same_relay(&relay)) {
            return Err(ClientError::BadInput(
                "this link is for a relay none of your conversations uses (its certificate differs); to move to another relay, start a new identity with it".into(),
            ));
        }
        let mut added = Vec::new();
        for e in relay.parsed_endpoints() {
            let text = e.to_string();
            let n = self.conn.execute(
                "INSERT OR IGNORE INTO relay_endpoints (relay_pin, endpoint, added_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![&relay.cert_sha256, &text, now()],
            )?;
            if n > 0 && !self.profile.relay.endpoints.contains(&text) {
                added.push(text);
            }
        }
        // Open connections may be on a path that stopped working; the next call races afresh.
        self.relays.clear();
        Ok(added)
    }

    /// The relays this identity uses: its own and every conversation's.
    fn known_relays(&self) -> Result<Vec<RelayDescriptor>, ClientError> {
        let mut out = vec![self.profile.relay.clone()];
        let mut stmt = self.conn.prepare("SELECT DISTINCT relay_link FROM conversations")?;
        let links: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        for link in links {
            if let Ok(d) = RelayDescriptor::from_link(&link)
                && !out.iter().any(|r| r.same_relay(&d))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every known endpoint of our own relay, best first.
    pub fn relay_endpoints(&self) -> Result<Vec<EndpointView>, ClientError> {
        let relay = &self.profile.relay;
        let mut out = Vec::new();
        for e in self.endpoints_for(relay)? {
            let text = e.to_string();
            let last_ok: Option<i64> = self
                .conn
                .query_row(
                    "SELECT last_ok FROM paths WHERE relay_pin = ?1 AND network = ?2 AND endpoint = ?3",
                    rusqlite::params![&relay.cert_sha256, &self.net.network, &text],
                    |r| r.get(0),
                )
                .ok();
            out.push(EndpointView {
                source: if relay.endpoints.contains(&text) { "link" } else { "added" },
                kind: e.kind(),
                endpoint: text,
                last_ok: last_ok.and_then(|t| u64::try_from(t).ok()),
            });
        }
        Ok(out)
    }

    /// Saves the proxy every connection goes through (`socks5://…`, `http://…`); empty or
    /// `none` removes it. Takes effect from the next start.
    pub fn set_proxy(&mut self, value: &str) -> Result<(), ClientError> {
        let value = value.trim();
        if value.is_empty() || value == "none" {
            self.conn.execute("DELETE FROM settings WHERE key = 'proxy'", [])?;
            return Ok(());
        }
        value.parse::<Proxy>().map_err(|e| ClientError::BadInput(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES ('proxy', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [value],
        )?;
        Ok(())
    }

    /// The saved proxy, if any.
    pub fn proxy_setting(&self) -> Result<Option<String>, ClientError> {
        saved_proxy(&self.conn)
    }

    /// Checks every way to our relay and says what blocks which.
    pub async fn doctor(&self) -> Result<Report, ClientError> {
        let endpoints = self.endpoints_for(&self.profile.relay)?;
        Ok(doctor(&self.net.dialer, &self.profile.relay, &endpoints).await)
    }
}

/// The proxy saved with `tamizdat config proxy`, if any.
pub(crate) fn saved_proxy(conn: &rusqlite::Connection) -> Result<Option<String>, ClientError> {
    use rusqlite::OptionalExtension;
    let saved: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE key = 'proxy'", [], |r| r.get(0)).optional()?;
    Ok(saved.filter(|s| !s.is_empty()))
}

/// The doctor for a relay link alone, without an identity (`tamizdat doctor --relay LINK`).
pub async fn doctor_link(link: &str, proxy: Option<Proxy>) -> Result<Report, ClientError> {
    let relay = RelayDescriptor::from_link(link).map_err(|e| ClientError::BadInput(format!("relay link: {e}")))?;
    let mut dialer = Dialer::from_env_transient()?;
    dialer.proxy = proxy;
    Ok(doctor(&dialer, &relay, &relay.parsed_endpoints()).await)
}

async fn doctor(dialer: &Dialer, relay: &RelayDescriptor, endpoints: &[Endpoint]) -> Report {
    Report::new(diagnose::diagnose(dialer, relay, endpoints).await)
}

/// Whether an error means the connection froze.
pub(crate) fn is_stall(e: &ClientError) -> bool {
    matches!(e, ClientError::Transport(TransportError::Stalled { .. }))
}

fn now() -> i64 {
    i64::try_from(crate::engine::now_secs()).unwrap_or(i64::MAX)
}
