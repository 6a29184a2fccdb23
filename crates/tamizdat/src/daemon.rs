//! `tamizdat daemon`: JSON-RPC 2.0 for bots and other frontends, on a Unix socket or on
//! standard input and output. One JSON value per line each way.
//!
//! One worker owns the client: it answers requests one at a time, keeps subscriptions to the
//! relays open, syncs whenever a relay announces something, and sends what arrives to every
//! connected frontend as notifications. Connections only parse and forward, so a hostile or
//! stuck frontend holds up nothing but itself. The methods are documented in docs/API.md.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tamizdat_client::{Client, ClientError, ErrorKind, SyncReport};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    sync::{broadcast, mpsc, oneshot},
};

use crate::Failure;

/// Longest request line accepted; a longer one closes that connection.
const MAX_LINE: u64 = 1024 * 1024;
/// Notifications a slow frontend may fall behind by before it misses some (it is told).
const NOTIFICATION_BACKLOG: usize = 1024;
/// Resync this often even without announcements; retry this often while a relay is unreachable.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(3);

/// A JSON-RPC error: a code and a message, with the error's kind for application errors.
#[derive(Debug)]
pub(crate) struct RpcError {
    code: i64,
    message: String,
    kind: Option<&'static str>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), kind: None }
    }

    fn to_json(&self) -> Value {
        match self.kind {
            Some(kind) => json!({ "code": self.code, "message": self.message, "data": { "kind": kind } }),
            None => json!({ "code": self.code, "message": self.message }),
        }
    }
}

impl From<ClientError> for RpcError {
    fn from(e: ClientError) -> Self {
        let (code, kind) = match e.kind() {
            ErrorKind::BadInput => (-32001, "bad_input"),
            ErrorKind::Retry => (-32002, "retry"),
            ErrorKind::Blocked => (-32003, "blocked"),
            _ => (-32004, "fatal"),
        };
        RpcError { code, message: e.to_string(), kind: Some(kind) }
    }
}

/// A request on its way to the worker, with where its answer goes.
struct Call {
    method: String,
    params: Value,
    answer: oneshot::Sender<Result<Value, RpcError>>,
}

/// Where the daemon listens.
pub(crate) enum Listen {
    Socket(PathBuf),
    Stdio,
}

/// Runs the daemon until Ctrl-C, SIGTERM, or (with stdio) the end of standard input.
pub(crate) async fn run(mut client: Client, listen: Listen) -> Result<(), Failure> {
    let (calls, mut incoming) = mpsc::channel::<Call>(64);
    let (notify, _) = broadcast::channel::<Value>(NOTIFICATION_BACKLOG);
    let front = match listen {
        Listen::Socket(path) => {
            let listener = bind(&path)?;
            eprintln!("tamizdat daemon listening on {} (JSON-RPC 2.0, one message per line)", path.display());
            let (calls, notify) = (calls.clone(), notify.clone());
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let (read, write) = stream.into_split();
                            tokio::spawn(serve(read, write, calls.clone(), notify.subscribe()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        }
        Listen::Stdio => {
            let (calls, rx) = (calls.clone(), notify.subscribe());
            tokio::spawn(serve(tokio::io::stdin(), tokio::io::stdout(), calls, rx))
        }
    };
    drop(calls);
    let result = tokio::select! {
        r = work(&mut client, &mut incoming, &notify) => r,
        _ = crate::shutdown_signal() => Ok(()),
    };
    front.abort();
    client.close().await;
    result
}

/// Binds the socket, readable and writable by this user only. A socket file left by a daemon
/// that is gone is replaced; one that answers is not.
fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, Failure> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Failure(format!("a daemon already listens on {}", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| Failure(format!("cannot replace {}: {e}", path.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Failure(format!("cannot listen on {}: {e}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Failure(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

/// The worker: answers calls, and between them waits for the relays' announcements.
async fn work(
    client: &mut Client,
    incoming: &mut mpsc::Receiver<Call>,
    notify: &broadcast::Sender<Value>,
) -> Result<(), Failure> {
    let mut sync_due = true;
    let mut healthy = false;
    let mut status = Value::Null;
    loop {
        if sync_due {
            let subscribed = client.subscribe_all().await;
            match client.sync().await {
                Ok(report) => {
                    healthy = subscribed.is_ok() && report.failures.is_empty();
                    publish(notify, &report);
                }
                Err(e) if matches!(e.kind(), ErrorKind::Retry | ErrorKind::Blocked) => {
                    healthy = false;
                    let _ = notify.send(notification("sync.failed", json!({ "error": e.to_string() })));
                }
                Err(e) => return Err(e.into()),
            }
            sync_due = false;
        }
        let now = serde_json::to_value(client.connection_status()).unwrap_or(Value::Null);
        if now != status {
            let _ = notify.send(notification("status", now.clone()));
            status = now;
        }
        let wait = if healthy { RESYNC } else { RETRY };
        tokio::select! {
            call = incoming.recv() => {
                let Some(call) = call else { return Ok(()) }; // stdio closed
                let result = dispatch(client, &call.method, call.params).await;
                let _ = call.answer.send(result);
            }
            _ = client.wait_for_notice(wait) => sync_due = true,
        }
    }
}

fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// Tells every frontend what a sync found.
fn publish(notify: &broadcast::Sender<Value>, report: &SyncReport) {
    let send = |method: &str, params: Value| {
        let _ = notify.send(notification(method, params));
    };
    for name in &report.new_contacts {
        send("contact.new", json!({ "name": name }));
    }
    for name in &report.new_groups {
        send("group.joined", json!({ "name": name }));
    }
    for (old, new) in &report.renamed {
        send("contact.renamed", json!({ "old": old, "new": new }));
    }
    for m in &report.messages {
        send("message", json!(m));
    }
    for m in &report.changed {
        send("message.changed", json!(m));
    }
    for t in &report.typing {
        send("typing", json!(t));
    }
    if !report.failures.is_empty() {
        send("sync.failed", json!({ "errors": report.failures }));
    }
}

/// One frontend: reads requests, forwards them, writes answers and notifications.
async fn serve(
    read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin + Send + 'static,
    calls: mpsc::Sender<Call>,
    mut notes: broadcast::Receiver<Value>,
) {
    let (out, mut outgoing) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        loop {
            let value = tokio::select! {
                v = outgoing.recv() => match v { Some(v) => v, None => break },
                n = notes.recv() => match n {
                    Ok(n) => n,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        notification("notifications.missed", json!({ "count": missed }))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            let mut line = value.to_string();
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() || write.flush().await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() as u64 > MAX_LINE => {
                let _ = out.send(error_response(Value::Null, RpcError::new(-32600, "request longer than 1 MiB"))).await;
                break;
            }
            Ok(_) => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match serde_json::from_slice::<Value>(&line) {
            Err(e) => Some(error_response(Value::Null, RpcError::new(-32700, format!("parse error: {e}")))),
            Ok(Value::Array(batch)) if batch.is_empty() => {
                Some(error_response(Value::Null, RpcError::new(-32600, "empty batch")))
            }
            Ok(Value::Array(batch)) => {
                let mut answers = Vec::new();
                for request in batch {
                    answers.extend(handle(request, &calls).await);
                }
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            Ok(request) => handle(request, &calls).await,
        };
        if let Some(answer) = answer
            && out.send(answer).await.is_err()
        {
            break;
        }
    }
    drop(out);
    let _ = writer.await;
}

/// Answers one request (None for a notification, which gets no answer).
async fn handle(request: Value, calls: &mpsc::Sender<Call>) -> Option<Value> {
    let id = request.get("id").cloned();
    let valid_id = matches!(id, None | Some(Value::Null | Value::Number(_) | Value::String(_)));
    let method = request.get("method").and_then(Value::as_str).map(str::to_string);
    let (Some(method), true, Some("2.0")) = (method, valid_id, request.get("jsonrpc").and_then(Value::as_str)) else {
        return Some(error_response(id.unwrap_or(Value::Null), RpcError::new(-32600, "invalid request")));
    };
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Object(_)) {
        return Some(error_response(id.unwrap_or(Value::Null), RpcError::new(-32602, "params must be an object")));
    }
    let (answer, result) = oneshot::channel();
    if calls.send(Call { method, params, answer }).await.is_err() {
        return id.map(|id| error_response(id, RpcError::new(-32603, "the daemon is stopping")));
    }
    let result = result.await.unwrap_or_else(|_| Err(RpcError::new(-32603, "the daemon is stopping")));
    let id = id?;
    Some(match result {
        Ok(value) => json!({ "jsonrpc": "2.0", "id": id, "result": value }),
        Err(e) => error_response(id, e),
    })
}

fn error_response(id: Value, e: RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() })
}

fn params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params).map_err(|e| RpcError::new(-32602, format!("invalid params: {e}")))
}

fn to_json(value: impl serde::Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(value).map_err(|e| RpcError::new(-32603, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversation {
    conversation: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Contact {
    contact: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendParams {
    to: String,
    text: String,
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    to: String,
    message: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
}

/// Runs one method on the client.
pub(crate) async fn dispatch(client: &mut Client, method: &str, p: Value) -> Result<Value, RpcError> {
    match method {
        "contacts" => to_json(client.contacts()?),
        "conversations" => to_json(client.conversations()?),
        "messages" => to_json(client.messages(&params::<Conversation>(p)?.conversation)?),
        "groups" => to_json(client.groups()?),
        "status" => to_json(client.connection_status()),
        "sync" => {
            let report = client.sync().await?;
            to_json(&report)
        }
        "send" => {
            let s: SendParams = params(p)?;
            match s.reply_to {
                Some(id) => to_json(client.reply(&s.to, &s.text, &id).await?),
                None => to_json(client.send(&s.to, &s.text).await?),
            }
        }
        "send_file" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                to: String,
                path: PathBuf,
                #[serde(default)]
                kind: Option<String>,
                #[serde(default)]
                caption: Option<String>,
            }
            let f: P = params(p)?;
            let kind = f.kind.as_deref().map(str::parse::<tamizdat_client::FileKind>).transpose()?;
            to_json(client.send_file(&f.to, &f.path, kind, f.caption.as_deref(), |_, _| {}).await?)
        }
        "save" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                message: String,
                #[serde(default)]
                path: Option<PathBuf>,
            }
            let f: P = params(p)?;
            to_json(client.save(&f.message, f.path.as_deref(), |_, _| {}).await?)
        }
        "edit" => {
            let t: Target = params(p)?;
            let text = t.text.ok_or_else(|| RpcError::new(-32602, "invalid params: missing field `text`"))?;
            to_json(client.edit(&t.to, &t.message, &text).await?)
        }
        "delete" => {
            let t: Target = params(p)?;
            to_json(client.delete(&t.to, &t.message).await?)
        }
        "react" => {
            let t: Target = params(p)?;
            to_json(client.react(&t.to, &t.message, t.emoji.as_deref().unwrap_or("")).await?)
        }
        "read" => {
            let c: Conversation = params(p)?;
            Ok(json!({ "marked_read": client.mark_read(&c.conversation).await? }))
        }
        "typing" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                conversation: String,
                typing: bool,
            }
            let t: P = params(p)?;
            Ok(json!({ "sent": client.typing(&t.conversation, t.typing).await? }))
        }
        "expire" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                conversation: String,
                seconds: u32,
            }
            let e: P = params(p)?;
            to_json(client.set_expiry(&e.conversation, e.seconds).await?)
        }
        "verify" => to_json(client.verify(&params::<Contact>(p)?.contact)?),
        "verify.mark" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                contact: String,
                verified: bool,
            }
            let v: P = params(p)?;
            to_json(client.mark_verified(&v.contact, v.verified)?)
        }
        "verify.accept" => to_json(client.accept_key_change(&params::<Contact>(p)?.contact)?),
        "invite" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                #[serde(default)]
                expires_secs: Option<u64>,
            }
            let secs = params::<P>(p)?.expires_secs.unwrap_or(7 * 86_400);
            if secs == 0 {
                return Err(RpcError::new(-32602, "invalid params: expires_secs must be positive"));
            }
            let link = client.invite(secs)?;
            let code = client.invite_code(&link).await.ok();
            Ok(json!({ "link": link, "code": code, "expires_in_secs": secs }))
        }
        "accept" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                link: String,
                #[serde(default, rename = "as")]
                alias: Option<String>,
            }
            let a: P = params(p)?;
            let name = client.accept(&a.link, a.alias.as_deref()).await?;
            let key_changed = client.verify(&name).map(|v| v.key_changed_at.is_some()).unwrap_or(false);
            Ok(json!({ "contact": name, "key_changed": key_changed }))
        }
        "group.create" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                name: String,
                #[serde(default)]
                classic: bool,
            }
            let g: P = params(p)?;
            let suite = if g.classic { tamizdat_e2e::CLASSIC_SUITE } else { tamizdat_e2e::DEFAULT_SUITE };
            Ok(json!({ "group": client.group_create(&g.name, suite).await? }))
        }
        "group.add" | "group.remove" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                group: String,
                members: Vec<String>,
            }
            let g: P = params(p)?;
            let report = if method == "group.add" {
                client.group_add(&g.group, &g.members).await?
            } else {
                client.group_remove(&g.group, &g.members).await?
            };
            Ok(json!({ "group": g.group, "retried_commits": report.retried_commits }))
        }
        "group.leave" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                group: String,
            }
            let g: P = params(p)?;
            client.group_leave(&g.group).await?;
            Ok(json!({ "group": g.group }))
        }
        "group.members" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                group: String,
            }
            to_json(client.group_members(&params::<P>(p)?.group)?)
        }
        "config.get" => {
            let map: serde_json::Map<String, Value> =
                client.settings()?.into_iter().map(|(k, v, _)| (k, Value::from(v))).collect();
            Ok(Value::Object(map))
        }
        "config.set" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                key: String,
                value: String,
            }
            let c: P = params(p)?;
            client.set_setting(&c.key, &c.value)?;
            Ok(json!({ c.key: c.value }))
        }
        "config.proxy" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                #[serde(default)]
                value: Option<String>,
            }
            if let Some(value) = params::<P>(p)?.value {
                client.set_proxy(&value)?;
            }
            Ok(json!({ "proxy": client.proxy_setting()? }))
        }
        "doctor" => to_json(client.doctor().await?),
        "relay.endpoints" => to_json(client.relay_endpoints()?),
        "relay.add" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                link: String,
            }
            Ok(json!({ "added": client.add_relay_link(&params::<P>(p)?.link)? }))
        }
        _ => Err(RpcError::new(-32601, format!("no method {method:?}; docs/API.md lists them"))),
    }
}
