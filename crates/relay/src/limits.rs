//! Abuse limits that apply before any work is done: per source address at accept time
//! (before TLS), per connection at each request (before decoding the command).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

/// The limits a relay enforces. Defaults suit a volunteer relay for thousands of people;
/// benchmarks and large deployments raise them.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections one source address may hold open at once.
    pub connections_per_address: u32,
    /// New connections per second one source address may open (sustained).
    pub new_connections_per_second: f64,
    /// Burst allowance for new connections from one address.
    pub new_connections_burst: f64,
    /// Requests per second one connection may make (sustained).
    pub requests_per_second: f64,
    /// Burst allowance for requests on one connection.
    pub requests_burst: f64,
    /// Connections the relay holds at once, from everyone; past it, new ones wait in the
    /// kernel's backlog. An idle connection costs the relay about 12 KiB (docs/BENCHMARKS.md).
    pub max_connections: usize,
    /// Largest blob (an attachment's ciphertext) one may create, in bytes.
    pub max_blob_bytes: u64,
    /// Blobs one connection may create. It bounds a burst on one connection; what a person
    /// can store in all is bounded by their upload speed and the retention period.
    pub blobs_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_address: 256,
            new_connections_per_second: 20.0,
            new_connections_burst: 100.0,
            requests_per_second: 500.0,
            requests_burst: 2000.0,
            max_connections: 20_000,
            max_blob_bytes: 256 * 1024 * 1024,
            blobs_per_connection: 64,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { tokens: burst, last: Instant::now(), rate, burst }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct AddressState {
    open: u32,
    bucket: Bucket,
}

/// Per-address accounting of connections. Addresses are kept only in memory and never
/// logged; addresses without open connections are forgotten once the table holds
/// `PRUNE_AT` of them (which also resets their new-connection budget).
#[derive(Clone)]
pub struct AddressLimiter {
    limits: Limits,
    state: Arc<Mutex<HashMap<IpAddr, AddressState>>>,
}

/// Holds one connection's place; dropping it frees the place.
pub struct AddressPermit {
    limiter: AddressLimiter,
    ip: IpAddr,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        if let Some(s) = self.limiter.state.lock().ok().as_mut().and_then(|map| map.get_mut(&self.ip)) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// How many idle addresses are remembered before the table is pruned.
const PRUNE_AT: usize = 100_000;

impl AddressLimiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits, state: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A permit for a new connection from `ip`, or `None` if it is over its limits. IPv6
    /// addresses count per /64, the block one subscriber usually gets.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressPermit> {
        let ip = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))
            }
            IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
            v4 => v4,
        };
        let now = Instant::now();
        let mut map = self.state.lock().ok()?;
        if map.len() >= PRUNE_AT {
            map.retain(|_, s| s.open > 0);
        }
        let limits = &self.limits;
        let s = map.entry(ip).or_insert_with(|| AddressState {
            open: 0,
            bucket: Bucket::new(limits.new_connections_per_second, limits.new_connections_burst),
        });
        if s.open >= limits.connections_per_address || !s.bucket.take(now) {
            return None;
        }
        s.open += 1;
        Some(AddressPermit { limiter: self.clone(), ip })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(10.0, 5.0);
        assert!((0..5).all(|_| b.take(start)));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(150)));
        assert!(!b.take(start + Duration::from_millis(150)));
    }

    #[test]
    fn addresses_are_limited_separately() {
        let limits = Limits { connections_per_address: 2, new_connections_burst: 10.0, ..Limits::default() };
        let l = AddressLimiter::new(limits);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "third concurrent connection refused");
        assert!(l.admit(b).is_some(), "another address is unaffected");
        drop(p1);
        assert!(l.admit(a).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let limits = Limits { connections_per_address: 2, new_connections_burst: 10.0, ..Limits::default() };
        let l = AddressLimiter::new(limits);
        let _p1 = l.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _p2 = l.admit("2001:db8::ffff:1".parse().unwrap()).unwrap();
        assert!(l.admit("2001:db8::dead:beef".parse().unwrap()).is_none());
        assert!(l.admit("2001:db8:0:1::1".parse().unwrap()).is_some(), "the next /64 is someone else");
    }
}
