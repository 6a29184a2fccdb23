//! Pluggable Transports v1 (Tor's pt-spec): any conforming binary (obfs4proxy, lyrebird,
//! snowflake, webtunnel) as a managed proxy.
//!
//! Client side: the binary is started with `TOR_PT_CLIENT_TRANSPORTS`, answers with a local
//! SOCKS5 port per transport (`CMETHOD`), and each bridge connection is a SOCKS5 CONNECT to
//! the bridge with its arguments as credentials. Server side: the binary listens on the
//! public address (`TOR_PT_SERVER_BINDADDR`), unwraps the transport and forwards plain bytes
//! (our TLS) to the relay's own port (`TOR_PT_ORPORT`); it prints the arguments clients need
//! (`SMETHOD … ARGS:cert=…`), which become the bridge line in the relay link.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
    sync::Mutex,
    time::timeout,
};

use crate::{TransportError, endpoint::PtBridge, proxy::Proxy};

/// How long a PT binary may take to report its methods.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The binaries known to implement a transport, in order of preference, looked up on `PATH`.
fn known_binaries(transport: &str) -> &'static [&'static str] {
    match transport {
        "obfs4" | "meek_lite" | "scramblesuit" => &["lyrebird", "obfs4proxy"],
        "snowflake" => &["snowflake-client", "lyrebird"],
        "webtunnel" => &["webtunnel-client", "lyrebird"],
        _ => &[],
    }
}

/// Finds the binary for `transport`: `TAMIZDAT_PT` (`obfs4=/path,webtunnel=/path`) first,
/// then the known names on `PATH`.
pub fn find_binary(transport: &str) -> Result<PathBuf, TransportError> {
    if let Ok(list) = std::env::var("TAMIZDAT_PT") {
        for item in list.split(',') {
            if let Some((name, path)) = item.split_once('=')
                && name.trim() == transport
            {
                return Ok(PathBuf::from(path.trim()));
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in known_binaries(transport) {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(TransportError::Setup(format!(
        "no program for the {transport} transport: install obfs4proxy or lyrebird, or set TAMIZDAT_PT={transport}=/path/to/binary"
    )))
}

/// A running managed PT binary; it is stopped (stdin closed, then killed) when dropped.
struct Running {
    _child: Child,
    socks: SocketAddr,
}

/// Starts client-side PT binaries on first use and keeps them for the life of the process.
pub struct PtClients {
    state_dir: PathBuf,
    running: Mutex<HashMap<String, Running>>,
}

impl PtClients {
    /// PT state (keys, caches) lives under `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self { state_dir, running: Mutex::new(HashMap::new()) }
    }

    /// A SOCKS5 tunnel through the bridge, starting the transport's binary if needed. Under a
    /// proxy, the PT itself goes through it (`TOR_PT_PROXY`).
    pub async fn connect(
        &self,
        bridge: &PtBridge,
        proxy: Option<&Proxy>,
    ) -> Result<tokio::net::TcpStream, TransportError> {
        let socks = self.socks_port(&bridge.transport, proxy).await?;
        let mut tcp = tokio::net::TcpStream::connect(socks)
            .await
            .map_err(|e| TransportError::Proxy(format!("{} transport: {e}", bridge.transport)))?;
        let _ = tcp.set_nodelay(true);
        let args = bridge.socks_args().into_bytes();
        // pt-spec §3.5: the arguments fill the user name, then the password; a lone NUL
        // password when they fit in the user name.
        let (user, pass) = if args.len() <= 255 {
            (args, vec![0])
        } else {
            let (u, p) = args.split_at(255);
            (u.to_vec(), p.to_vec())
        };
        let auth = if user.is_empty() { None } else { Some((user, pass)) };
        crate::proxy::socks5_connect(&mut tcp, &bridge.addr.to_string(), auth).await?;
        Ok(tcp)
    }

    async fn socks_port(&self, transport: &str, proxy: Option<&Proxy>) -> Result<SocketAddr, TransportError> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.get(transport) {
            return Ok(r.socks);
        }
        let mut env = vec![("TOR_PT_CLIENT_TRANSPORTS", transport.to_string())];
        if let Some(p) = proxy {
            env.push(("TOR_PT_PROXY", pt_proxy_url(p)));
        }
        let (child, lines, binary) = launch(transport, &self.state_dir, &env, "CMETHODS DONE").await?;
        let socks = match method_words(&lines, "CMETHOD", transport, &binary)?.as_slice() {
            [kind, addr, ..] if kind == "socks5" => addr.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| TransportError::Setup(format!("{} offers {transport} without SOCKS5", binary.display())))?;
        running.insert(transport.to_string(), Running { _child: child, socks });
        Ok(socks)
    }
}

fn pt_proxy_url(p: &Proxy) -> String {
    match p {
        Proxy::Socks5 { addr, auth: Some((u, pw)) } => format!("socks5://{u}:{pw}@{addr}"),
        Proxy::Socks5 { addr, auth: None } => format!("socks5://{addr}"),
        Proxy::Http { addr } => format!("http://{addr}"),
    }
}

/// Starts `transport`'s binary as a managed proxy: the environment every PT gets, plus the
/// role's (`role_env`), then reads its report up to `done`. The child is stopped when dropped.
async fn launch(
    transport: &str,
    state_dir: &Path,
    role_env: &[(&str, String)],
    done: &str,
) -> Result<(Child, Vec<String>, PathBuf), TransportError> {
    let binary = find_binary(transport)?;
    let state = state_dir.join(transport);
    std::fs::create_dir_all(&state).map_err(|e| TransportError::Setup(format!("{}: {e}", state.display())))?;
    let mut cmd = Command::new(&binary);
    cmd.env("TOR_PT_MANAGED_TRANSPORT_VER", "1")
        .env("TOR_PT_STATE_LOCATION", &state)
        .env("TOR_PT_EXIT_ON_STDIN_CLOSE", "1")
        .envs(role_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child =
        cmd.spawn().map_err(|e| TransportError::Setup(format!("cannot start {}: {e}", binary.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| TransportError::Setup("PT stdout missing".into()))?;
    let lines = read_until(stdout, done, &binary).await?;
    Ok((child, lines, binary))
}

/// The words after `KEYWORD transport` on the PT's method line (`CMETHOD obfs4 socks5 ADDR`,
/// `SMETHOD obfs4 ADDR ARGS:…`), or the PT's own error.
fn method_words(
    lines: &[String],
    keyword: &str,
    transport: &str,
    binary: &Path,
) -> Result<Vec<String>, TransportError> {
    lines
        .iter()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(keyword) && words.next() == Some(transport))
                .then(|| words.map(str::to_string).collect())
        })
        .ok_or_else(|| {
            let why =
                lines.iter().find(|l| l.contains("ERROR")).cloned().unwrap_or_else(|| format!("no {keyword} line"));
            TransportError::Setup(format!("{} did not start {transport}: {why}", binary.display()))
        })
}

/// Reads the PT's stdout up to `done` (or an error line), then keeps draining it in the
/// background so the binary never blocks on a full pipe.
async fn read_until(stdout: ChildStdout, done: &str, binary: &Path) -> Result<Vec<String>, TransportError> {
    let mut reader = BufReader::new(stdout).lines();
    let mut lines = Vec::new();
    let collect = async {
        while let Ok(Some(line)) = reader.next_line().await {
            let finished = line.starts_with(done) || line.starts_with("VERSION-ERROR") || line.starts_with("ENV-ERROR");
            tracing::debug!(pt = %binary.display(), %line, "pluggable transport says");
            lines.push(line);
            if finished {
                return true;
            }
        }
        false
    };
    let finished = timeout(STARTUP_TIMEOUT, collect)
        .await
        .map_err(|_| TransportError::Setup(format!("{} did not report its transports in time", binary.display())))?;
    if !finished {
        return Err(TransportError::Setup(format!(
            "{} exited during startup: {}",
            binary.display(),
            lines.join(" | ")
        )));
    }
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    Ok(lines)
}

/// A server-side PT: the binary and what clients need to reach it.
pub struct PtServer {
    _child: Child,
    /// The bridge line clients use (`obfs4 IP:PORT cert=… iat-mode=0`), with `public` as the
    /// address.
    pub bridge_line: String,
}

/// Starts `transport` listening on `bind`, forwarding to the relay's TLS port `relay`.
/// `public` is the address clients dial (the same as `bind` unless behind NAT).
pub async fn serve(
    transport: &str,
    bind: SocketAddr,
    public: SocketAddr,
    relay: SocketAddr,
    state_dir: &Path,
) -> Result<PtServer, TransportError> {
    let env = [
        ("TOR_PT_SERVER_TRANSPORTS", transport.to_string()),
        ("TOR_PT_SERVER_BINDADDR", format!("{transport}-{bind}")),
        ("TOR_PT_ORPORT", relay.to_string()),
    ];
    let (child, lines, binary) = launch(transport, state_dir, &env, "SMETHODS DONE").await?;
    let words = method_words(&lines, "SMETHOD", transport, &binary)?;
    let args = words.iter().find_map(|w| w.strip_prefix("ARGS:")).map(smethod_args).unwrap_or_default();
    let mut bridge_line = format!("{transport} {public}");
    for (k, v) in args {
        bridge_line.push_str(&format!(" {k}={v}"));
    }
    Ok(PtServer { _child: child, bridge_line })
}

/// `ARGS:k=v,k=v` of an SMETHOD line, with `\,` and `\=` escapes.
fn smethod_args(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    let mut items = Vec::new();
    for c in s.chars() {
        match (escaped, c) {
            (true, c) => {
                current.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, ',') => items.push(std::mem::take(&mut current)),
            (false, c) => current.push(c),
        }
    }
    items.push(current);
    for item in items {
        if let Some((k, v)) = item.split_once('=') {
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smethod_arguments_are_split() {
        assert_eq!(
            smethod_args("cert=AbC/+x,iat-mode=0"),
            vec![("cert".into(), "AbC/+x".into()), ("iat-mode".into(), "0".into())]
        );
        assert_eq!(smethod_args("k=a\\,b"), vec![("k".to_string(), "a,b".to_string())]);
    }
}
