//! `tamizdat`: the command line and the relay in one binary.

use std::{
    io::{IsTerminal, Read, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tamizdat_client::{
    Client, ClientError, DoctorReport, ErrorKind, FileKind, MessageView, NetOptions, Proxy, SyncReport,
};
use tamizdat_relay::{DEFAULT_RETENTION, Relay, RelayConfig, identity::RelayIdentity};

mod chat;
mod daemon;
mod daily;

/// Tamizdat: end-to-end encrypted messaging that gets through censorship.
#[derive(Parser)]
#[command(name = "tamizdat", version, about)]
struct Cli {
    /// Where this identity's encrypted store lives.
    #[arg(long, global = true, env = "TAMIZDAT_HOME")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Reach relays through this proxy: socks5://HOST:PORT or http://HOST:PORT (overrides the
    /// `proxy` setting).
    #[arg(long, global = true, env = "TAMIZDAT_PROXY", value_parser = parse_proxy)]
    proxy: Option<Proxy>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run or manage a relay; add ways to reach yours.
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Run a bridge: forward connections to a relay from an address the censor does not block.
    Bridge {
        #[command(subcommand)]
        command: BridgeCommand,
    },
    /// Check every way to your relay and say what is blocked and what Tamizdat does about it.
    Doctor {
        /// Check this relay link instead of your own relay (works without an identity).
        #[arg(long)]
        relay: Option<String>,
    },
    /// Create an identity that uses the relay of LINK.
    Init {
        /// Your display name; it travels only inside encrypted conversations.
        #[arg(long)]
        name: String,
        /// The relay link (tamizdat:relay/…).
        #[arg(long)]
        relay: String,
    },
    /// Print a one-time invite link (and, on a terminal, a QR code).
    Invite {
        /// How long the invite stays valid: 30m, 12h, 7d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires: Duration,
        /// Also make a short code for it, held encrypted on your relay: small enough for a QR
        /// code (made anyway for the QR code on a terminal when the link is too long).
        #[arg(long)]
        code: bool,
    },
    /// Accept an invite link.
    Accept {
        /// The invite link (tamizdat:invite/…).
        link: String,
        /// Your name for this contact (otherwise the name they chose).
        #[arg(long = "as")]
        alias: Option<String>,
    },
    /// List contacts.
    Contacts,
    /// Send a message or a file; TEXT of `-` reads standard input.
    Send {
        /// The contact or group.
        contact: String,
        /// The text, or `-`; with --file, an optional caption.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file: encrypted, uploaded in pieces, then announced. If the upload is cut
        /// short, the same command again (or `tamizdat sync`) goes on where it stopped.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// What the file is: file, image or voice (default: guessed from its extension).
        #[arg(long, requires = "file", value_parser = ["file", "image", "voice"])]
        kind: Option<String>,
        /// Answer this message (its id, as `messages --json` shows it).
        #[arg(long = "reply-to", value_name = "MESSAGE-ID", conflicts_with = "file")]
        reply_to: Option<String>,
    },
    /// List conversations, the most recent first, with unread counts.
    Conversations,
    /// Mark a conversation read (and tell the senders, unless `read-receipts` is off).
    Read {
        /// The contact or group.
        contact: String,
    },
    /// Change the text of one of your messages, for everyone.
    Edit {
        /// The contact or group.
        contact: String,
        /// The message's id.
        message: String,
        /// The new text.
        text: String,
    },
    /// Delete one of your messages for everyone.
    Delete {
        /// The contact or group.
        contact: String,
        /// The message's id.
        message: String,
    },
    /// React to a message with an emoji (`--remove` takes your reaction back).
    React {
        /// The contact or group.
        contact: String,
        /// The message's id.
        message: String,
        /// The emoji.
        #[arg(required_unless_present = "remove")]
        emoji: Option<String>,
        /// Take your reaction back.
        #[arg(long, conflicts_with = "emoji")]
        remove: bool,
    },
    /// Make messages in a conversation disappear after a while, for everyone: 30s, 10m, 12h,
    /// 1d, 7d, or `off`.
    Expire {
        /// The contact or group.
        contact: String,
        /// How long messages last.
        #[arg(value_parser = parse_timer)]
        after: u32,
    },
    /// Show the safety number you share with a contact, to compare in person or by QR code.
    Verify {
        /// The contact.
        contact: String,
        /// The numbers matched: mark the contact verified.
        #[arg(long, conflicts_with_all = ["unmark", "accept"])]
        mark: bool,
        /// Mark the contact not verified.
        #[arg(long, conflicts_with = "accept")]
        unmark: bool,
        /// Acknowledge a changed key without comparing (the contact stays unverified).
        #[arg(long)]
        accept: bool,
    },
    /// Download, check and save the file of a message.
    Save {
        /// The message's id (`tamizdat messages CONTACT --json` shows it).
        message_id: String,
        /// Where to save it; a directory means the sender's file name in it. Default: the
        /// sender's file name in the current directory. An existing file is never replaced.
        path: Option<PathBuf>,
    },
    /// Deliver what waits and fetch what is new.
    Sync {
        /// Keep running and show what arrives as it arrives (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this long (30s, 10m, 1h).
        #[arg(long = "for", value_parser = parse_duration, requires = "follow")]
        duration: Option<Duration>,
    },
    /// List a conversation (a contact's or a group's) in order.
    Messages {
        /// The contact or group.
        contact: String,
    },
    /// Create and manage groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// List your groups.
    Groups,
    /// Open the chat screen: conversations, messages, compose (press ? for the keys).
    Chat,
    /// Serve JSON-RPC 2.0 for bots and other frontends (docs/API.md): on a Unix socket, or on
    /// standard input and output.
    Daemon {
        /// The socket (default: daemon.sock in the home directory).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Speak on standard input and output instead of a socket.
        #[arg(long, conflicts_with = "socket")]
        stdio: bool,
    },
    /// Show settings, or change one: `tamizdat config update-after-messages 50`.
    Config {
        /// The setting to change.
        key: Option<String>,
        /// Its new value.
        #[arg(requires = "key")]
        value: Option<String>,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group with only you in it.
    Create {
        /// The group's name, shown to everyone you add.
        name: String,
        /// Use the classic X25519 ciphersuite instead of the post-quantum hybrid: smaller
        /// invites for very large groups (see docs/BENCHMARKS.md).
        #[arg(long)]
        classic: bool,
    },
    /// Add contacts to a group.
    Add {
        /// The group.
        group: String,
        /// Contacts to add.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Remove members from a group.
    Remove {
        /// The group.
        group: String,
        /// Members to remove (names as `tamizdat group members` shows them).
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Leave a group; its keys are erased from this device.
    Leave {
        /// The group.
        group: String,
    },
    /// List a group's members.
    Members {
        /// The group.
        group: String,
    },
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Create the relay's keys and print its link.
    Init {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Endpoint to put in the link (IP:PORT preferred); repeatable.
        #[arg(long)]
        public: Vec<String>,
    },
    /// Serve (initialising DATA if needed). Settings come from flags, then `--config FILE`,
    /// then defaults.
    Serve {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// A TOML file with any of: listen, public, store, retention, admin, durability, shards,
        /// [limits].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 0.0.0.0:443).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where to serve Prometheus metrics (GET /metrics); keep it private, e.g. 127.0.0.1:9464.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Endpoint to put in the link (IP:PORT preferred); repeatable.
        #[arg(long)]
        public: Vec<String>,
        /// How long undelivered messages are kept: 21d by default.
        #[arg(long, value_parser = parse_duration)]
        retention: Option<Duration>,
        /// Where to keep data: `postgres://…` for a database shared by several relay nodes;
        /// by default an embedded SQLite file in DATA.
        #[arg(long, env = "TAMIZDAT_RELAY_STORE")]
        store: Option<String>,
        /// Also listen through a pluggable transport: `obfs4=IP:PORT` starts obfs4proxy (or
        /// lyrebird) there and adds its bridge line to the link; repeatable.
        #[arg(long, value_parser = parse_pt)]
        pt: Vec<(String, SocketAddr)>,
        /// Serve connections from N threads (at most 256), each with its own table of open
        /// files, so one process holds nearly N times its open-file limit (for hosts where
        /// `ulimit -n` cannot be raised); default 1.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        shards: Option<u16>,
    },
    /// Print the relay's link.
    Link {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Only these endpoints: an endpoint as listed, or a kind (`ip`, `domain`) or a
        /// transport name (`obfs4`); repeatable.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Learn more ways to your relay from a link (a bridge's, a PT bridge line, a domain).
    Add {
        /// A relay link for the same relay (same certificate).
        link: String,
    },
    /// List every known way to your relay, best first.
    Endpoints,
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Forward connections on ADDR to the relay of LINK; prints a link that lists this bridge
    /// first. The bridge sees only encrypted bytes.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The relay's link.
        #[arg(long)]
        relay: String,
        /// The address clients dial, if not the listening one (behind NAT).
        #[arg(long)]
        public: Option<String>,
    },
}

fn parse_proxy(s: &str) -> Result<Proxy, String> {
    s.parse().map_err(|e: tamizdat_transport::TransportError| e.to_string())
}

fn parse_pt(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: want TRANSPORT=IP:PORT, e.g. obfs4=0.0.0.0:8443"))?;
    let addr = addr.parse().map_err(|_| format!("{addr:?} is not IP:PORT"))?;
    Ok((name.to_string(), addr))
}

/// A disappearing-message timer: a duration, or `off`.
fn parse_timer(s: &str) -> Result<u32, String> {
    if s == "off" || s == "0" {
        return Ok(0);
    }
    let secs = parse_duration(s)?.as_secs();
    u32::try_from(secs)
        .ok()
        .filter(|s| *s <= tamizdat_e2e::content::MAX_EXPIRE_SECS)
        .ok_or_else(|| "the longest timer is 366d".to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30m, 12h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// A failure with the one line the user sees.
struct Failure(String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let hint = match (&e, e.kind()) {
            (ClientError::Transport(_), ErrorKind::Retry) => {
                " (check that the relay is running and reachable, then try again)"
            }
            (ClientError::Transport(_), ErrorKind::Blocked) => {
                " (something on the network is interfering; try another network, a proxy or a bridge)"
            }
            _ => "",
        };
        Failure(format!("{e}{hint}"))
    }
}

impl From<tamizdat_relay::RelayError> for Failure {
    fn from(e: tamizdat_relay::RelayError) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers use every core; a client command is one conversation with one relay.
    let server = matches!(cli.command, Command::Relay { command: RelayCommand::Serve { .. } } | Command::Bridge { .. });
    let filter = std::env::var("TAMIZDAT_LOG").unwrap_or_else(|_| if server { "info".into() } else { "error".into() });
    // Logs go to stderr; TAMIZDAT_LOG_FORMAT=json gives one JSON object per line for log
    // collectors. Nothing the relay logs names a client, an address or an id.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("TAMIZDAT_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = if server {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn home(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    directories::ProjectDirs::from("", "", "tamizdat")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| Failure("cannot find a data directory; pass --home DIR or set TAMIZDAT_HOME".into()))
}

/// The passphrase from `TAMIZDAT_PASSPHRASE`, or asked for on the terminal.
fn passphrase(confirm: bool) -> Result<String, Failure> {
    if let Ok(p) = std::env::var("TAMIZDAT_PASSPHRASE") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure("no passphrase: set TAMIZDAT_PASSPHRASE or run in a terminal to be asked".into()));
    }
    let p =
        rpassword::prompt_password("Passphrase: ").map_err(|e| Failure(format!("cannot read the passphrase: {e}")))?;
    if confirm {
        let again =
            rpassword::prompt_password("Again: ").map_err(|e| Failure(format!("cannot read the passphrase: {e}")))?;
        if again != p {
            return Err(Failure("the two passphrases differ; nothing was created".into()));
        }
    }
    Ok(p)
}

fn open(cli: &Cli) -> Result<Client, Failure> {
    let home = home(cli)?;
    if !tamizdat_client::store::exists(&home) {
        return Err(ClientError::NotInitialised(home.display().to_string()).into());
    }
    Ok(Client::open_with(&home, &passphrase(false)?, net_options(cli))?)
}

fn net_options(cli: &Cli) -> NetOptions {
    NetOptions { proxy: cli.proxy.clone() }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(value).map_err(|e| Failure(e.to_string()))?;
    println!("{s}");
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Relay { command } => relay(&cli, command).await,
        Command::Bridge { command: BridgeCommand::Serve { listen, relay, public } } => {
            let descriptor = tamizdat_wire::proto::RelayDescriptor::from_link(relay)
                .map_err(|e| Failure(format!("relay link: {e}")))?;
            let listener = tamizdat_transport::bridge::bind(*listen).await.map_err(|e| Failure(e.to_string()))?;
            let public = public.clone().unwrap_or_else(|| listen.to_string());
            let link =
                tamizdat_transport::bridge::bridge_link(&descriptor, &public).map_err(|e| Failure(e.to_string()))?;
            println!("{link}");
            let _ = std::io::stdout().flush();
            eprintln!(
                "bridge listening on {listen}, forwarding to the relay; give people the link above (Ctrl-C stops)"
            );
            let mut dialer =
                tamizdat_transport::dial::Dialer::from_env_transient().map_err(|e| Failure(e.to_string()))?;
            dialer.proxy = cli.proxy.clone();
            tokio::select! {
                r = tamizdat_transport::bridge::serve(listener, descriptor, std::sync::Arc::new(dialer)) => r.map_err(|e| Failure(e.to_string())),
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Doctor { relay } => {
            let report = match relay {
                Some(link) => tamizdat_client::doctor_link(link, cli.proxy.clone()).await?,
                None => open(&cli)?.doctor().await?,
            };
            if cli.json {
                print_json(&report)?;
            } else {
                print_doctor(&report);
            }
            if report.working.is_empty() {
                return Err(Failure("no way to the relay works from this network; see the advice above".into()));
            }
            Ok(())
        }
        Command::Init { name, relay } => {
            let home = home(&cli)?;
            if tamizdat_client::store::exists(&home) {
                return Err(ClientError::AlreadyInitialised(home.display().to_string()).into());
            }
            let pass = passphrase(true)?;
            let client = Client::init_with(&home, &pass, name, relay, net_options(&cli)).await?;
            let key = hex::encode(client.identity_key());
            if cli.json {
                print_json(&serde_json::json!({ "name": client.name(), "identity_key": key, "home": home }))?;
            } else {
                println!(
                    "Created {} in {}. Next: `tamizdat invite`, and send the link to someone.",
                    client.name(),
                    home.display()
                );
            }
            client.close().await;
            Ok(())
        }
        Command::Invite { expires, code } => {
            let mut client = open(&cli)?;
            let terminal = !cli.json && std::io::stdout().is_terminal();
            let link = client.invite(expires.as_secs())?;
            let mut short = None;
            if *code || (terminal && !fits_qr(&link)) {
                let made = client.invite_code(&link).await;
                client.close().await;
                match made {
                    Ok(c) => short = Some(c),
                    Err(e) if *code => return Err(e.into()),
                    // Only the QR code needed it: the link works without.
                    Err(e) => {
                        eprintln!("(no QR code: the short code needs your relay, and {e}; send the link as text)")
                    }
                }
            }
            if cli.json {
                print_json(&serde_json::json!({ "link": link, "code": short, "expires_in_secs": expires.as_secs() }))?;
            } else {
                println!("{link}");
                if let Some(short) = &short {
                    println!("{short}");
                }
                if terminal {
                    let scan = short.as_deref().unwrap_or(&link);
                    print_qr(scan);
                    if short.is_some() {
                        println!(
                            "(the QR code holds the short code: the invite itself waits, encrypted, on your relay)"
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Accept { link, alias } => {
            let mut client = open(&cli)?;
            let result = client.accept(link, alias.as_deref()).await;
            let changed = match &result {
                Ok(name) => client.verify(name).map(|v| v.key_changed_at.is_some()).unwrap_or(false),
                Err(_) => false,
            };
            client.close().await;
            let name = result?;
            if changed {
                eprintln!(
                    "WARNING: this invite comes from a different key than {name} had. If {name} did not get a new \
                     device, someone may be impersonating them. Compare safety numbers: tamizdat verify {name}"
                );
            }
            if cli.json {
                print_json(&serde_json::json!({ "contact": name }))?;
            } else {
                if alias.is_none() && name.starts_with("invite-") {
                    println!(
                        "Accepted. They are {name} until their chosen name arrives with your next `tamizdat sync`; \
                         you can already write: tamizdat send {name} \"hello\""
                    );
                } else {
                    println!("Accepted. You can now write to {name}: tamizdat send {name} \"hello\"");
                }
            }
            Ok(())
        }
        Command::Contacts => {
            let client = open(&cli)?;
            let contacts = client.contacts()?;
            if cli.json {
                print_json(&contacts)?;
            } else if contacts.is_empty() {
                println!("No contacts yet. `tamizdat invite` makes a link to send someone.");
            } else {
                for c in contacts {
                    println!("{}  ({})", c.name, &c.identity_key[..16]);
                }
            }
            Ok(())
        }
        Command::Send { contact, text, file: Some(path), kind, .. } => {
            let caption = text.as_deref().map(read_text).transpose()?;
            let kind = kind.as_deref().map(str::parse::<FileKind>).transpose()?;
            let mut client = open(&cli)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut progress = Progress::new(cli.json, &name);
            let result = client.send_file(contact, path, kind, caption.as_deref(), |d, t| progress.update(d, t)).await;
            progress.finish();
            client.close().await;
            let view = result?;
            if view.state == "failed" {
                return Err(Failure(format!(
                    "the relay refused the message naming {name} (kept in `tamizdat messages {contact}` as failed); send the file again"
                )));
            }
            if cli.json {
                print_json(&view)?;
            } else {
                let size = view.attachment.as_ref().map(|a| human_size(a.size)).unwrap_or_default();
                println!("sent {name} to {contact} ({size})");
            }
            Ok(())
        }
        Command::Send { contact, text, file: None, reply_to, .. } => {
            let text = read_text(text.as_deref().unwrap_or_default())?;
            let mut client = open(&cli)?;
            let result = match reply_to {
                Some(id) => client.reply(contact, &text, id).await,
                None => client.send(contact, &text).await,
            };
            client.close().await;
            let view = result?;
            if view.state == "failed" {
                return Err(Failure(format!(
                    "the relay refused this message (kept in `tamizdat messages {contact}` as failed); try sending it again"
                )));
            }
            if cli.json {
                print_json(&view)?;
            } else {
                println!("sent to {contact} ({} bytes)", view.text.len());
            }
            Ok(())
        }
        Command::Save { message_id, path } => {
            let mut client = open(&cli)?;
            let mut progress = Progress::new(cli.json, "saving");
            let result = client.save(message_id, path.as_deref(), |d, t| progress.update(d, t)).await;
            progress.finish();
            client.close().await;
            let saved = result?;
            if cli.json {
                print_json(&saved)?;
            } else {
                println!("saved {} ({}, SHA-256 {})", saved.path, human_size(saved.size), saved.sha256);
            }
            Ok(())
        }
        Command::Sync { follow, duration } => {
            let mut client = open(&cli)?;
            if *follow {
                let until = duration.map(|d| tokio::time::Instant::now() + d);
                let json = cli.json;
                let result = tokio::select! {
                    r = client.follow(until, |report| print_report(report, json, false)) => r,
                    _ = shutdown_signal() => Ok(()),
                };
                client.close().await;
                return Ok(result?);
            }
            let result = client.sync().await;
            client.close().await;
            let report = result?;
            if cli.json {
                print_json(&report)?;
            } else {
                print_report(&report, false, true);
            }
            match report.failures.first() {
                None => Ok(()),
                Some(first) => Err(Failure(format!(
                    "{first}{}; anything that did arrive is shown above, and `tamizdat sync` tries again",
                    if report.failures.len() > 1 {
                        format!(" (and {} more problems)", report.failures.len() - 1)
                    } else {
                        String::new()
                    }
                ))),
            }
        }
        Command::Group { command } => group(&cli, command).await,
        Command::Chat => {
            if !std::io::stdout().is_terminal() {
                return Err(Failure("`tamizdat chat` needs a terminal; scripts can use `tamizdat daemon`".into()));
            }
            chat::run(open(&cli)?).await
        }
        Command::Daemon { socket, stdio } => {
            let listen = match (socket, stdio) {
                (_, true) => daemon::Listen::Stdio,
                (Some(path), false) => daemon::Listen::Socket(path.clone()),
                (None, false) => daemon::Listen::Socket(home(&cli)?.join("daemon.sock")),
            };
            daemon::run(open(&cli)?, listen).await
        }
        Command::Conversations
        | Command::Read { .. }
        | Command::Edit { .. }
        | Command::Delete { .. }
        | Command::React { .. }
        | Command::Expire { .. }
        | Command::Verify { .. } => daily::run(&cli).await,
        Command::Groups => {
            let client = open(&cli)?;
            let groups = client.groups()?;
            if cli.json {
                print_json(&groups)?;
            } else if groups.is_empty() {
                println!("No groups yet. `tamizdat group create NAME` makes one.");
            } else {
                for g in groups {
                    let state = if g.state == "active" { String::new() } else { format!(" ({})", g.state) };
                    println!("{}  {} members{state}", g.name, g.members);
                }
            }
            Ok(())
        }
        Command::Config { key, value } if key.as_deref() == Some("proxy") => {
            let mut client = open(&cli)?;
            if let Some(value) = value {
                client.set_proxy(value)?;
            }
            let proxy = client.proxy_setting()?;
            if cli.json {
                print_json(&serde_json::json!({ "proxy": proxy }))?;
            } else {
                println!(
                    "proxy = {}    (socks5://HOST:PORT or http://HOST:PORT; `none` for direct)",
                    proxy.as_deref().unwrap_or("none")
                );
            }
            Ok(())
        }
        Command::Config { key, value } => {
            let mut client = open(&cli)?;
            if let (Some(key), Some(value)) = (key, value) {
                client.set_setting(key, value)?;
            }
            let settings = client.settings()?;
            let shown: Vec<_> = settings.iter().filter(|(k, _, _)| key.as_ref().is_none_or(|key| key == k)).collect();
            if shown.is_empty() {
                return Err(Failure(format!("no setting {:?}", key.clone().unwrap_or_default())));
            }
            if cli.json {
                let map: serde_json::Map<String, serde_json::Value> =
                    shown.iter().map(|(k, v, _)| (k.clone(), serde_json::Value::from(*v))).collect();
                print_json(&map)?;
            } else {
                for (k, v, about) in shown {
                    println!("{k} = {v}    ({about})");
                }
            }
            Ok(())
        }
        Command::Messages { contact } => {
            let client = open(&cli)?;
            let messages = client.messages(contact)?;
            if cli.json {
                print_json(&messages)?;
            } else {
                for m in &messages {
                    print_message(m);
                }
            }
            Ok(())
        }
    }
}

async fn group(cli: &Cli, command: &GroupCommand) -> Result<(), Failure> {
    let mut client = open(cli)?;
    let result = match command {
        GroupCommand::Create { name, classic } => {
            let suite = if *classic { tamizdat_e2e::CLASSIC_SUITE } else { tamizdat_e2e::DEFAULT_SUITE };
            client.group_create(name, suite).await.map(|name| {
                // A name with spaces is quoted in the hint, so it can be pasted into a shell.
                let arg = if name.contains(char::is_whitespace) { format!("{name:?}") } else { name.clone() };
                let text = format!("created {name}; add people with `tamizdat group add {arg} CONTACT`");
                serde_json::json!({ "group": name, "text": text })
            })
        }
        GroupCommand::Add { group, contacts } => client.group_add(group, contacts).await.map(|report| {
            serde_json::json!({ "group": group, "added": contacts, "retried_commits": report.retried_commits, "text": format!("added {} to {group}", contacts.join(", ")) })
        }),
        GroupCommand::Remove { group, members } => client.group_remove(group, members).await.map(|report| {
            serde_json::json!({ "group": group, "removed": members, "retried_commits": report.retried_commits, "text": format!("removed {} from {group}", members.join(", ")) })
        }),
        GroupCommand::Leave { group } => client
            .group_leave(group)
            .await
            .map(|()| serde_json::json!({ "group": group, "text": format!("you left {group}") })),
        GroupCommand::Members { group } => {
            let members = client.group_members(group);
            client.close().await;
            let members = members?;
            if cli.json {
                print_json(&members)?;
            } else {
                for m in members {
                    let you = if m.you { " (you)" } else { "" };
                    println!("{}{you}  ({})", m.name, &m.identity_key[..16]);
                }
            }
            return Ok(());
        }
    };
    client.close().await;
    let mut done = result?;
    if cli.json {
        if let Some(map) = done.as_object_mut() {
            map.remove("text");
        }
        print_json(&done)?;
    } else if let Some(text) = done.get("text").and_then(|t| t.as_str()) {
        println!("{text}");
    }
    Ok(())
}

fn print_doctor(report: &DoctorReport) {
    for e in &report.endpoints {
        let verdict =
            serde_json::to_value(e.verdict).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        println!("{}  via {}: {verdict}", e.endpoint, e.transport);
        for step in &e.steps {
            println!(
                "    {:<10} {:<4} {} ({} ms)",
                step.step,
                if step.ok { "ok" } else { "FAIL" },
                step.detail,
                step.millis
            );
        }
    }
    println!();
    println!("{}", report.advice);
}

/// Prints what a sync found: JSON lines (one per non-empty report) or text.
fn print_report(report: &SyncReport, json: bool, say_nothing_new: bool) {
    let empty = report.new_contacts.is_empty()
        && report.new_groups.is_empty()
        && report.renamed.is_empty()
        && report.messages.is_empty()
        && report.changed.is_empty();
    if json {
        if let (false, Ok(line)) = (empty, serde_json::to_string(report)) {
            println!("{line}");
        }
    } else {
        for name in &report.new_contacts {
            println!("new contact: {name}");
        }
        for name in &report.new_groups {
            println!("you were added to the group {name}");
        }
        for (old, new) in &report.renamed {
            println!("{old} is now known as {new}");
        }
        for m in &report.messages {
            print_message(m);
        }
        for m in &report.changed {
            print!("changed: ");
            print_message(m);
        }
        if empty && say_nothing_new {
            println!("nothing new");
        }
    }
    let _ = std::io::stdout().flush();
}

fn print_message(m: &MessageView) {
    let mut state = if m.outgoing && m.state != "sent" { format!(" [{}]", m.state) } else { String::new() };
    if m.edited {
        state.push_str(" (edited)");
    }
    for r in &m.reactions {
        state.push_str(&format!(" [{} {}]", r.emoji, r.by.join(", ")));
    }
    // A file: `[image cat.jpg, 2.1 MB]`, then its caption, and where it was saved.
    let text = match &m.attachment {
        _ if m.deleted => "(deleted)".to_string(),
        Some(a) => {
            let caption = if m.text == a.name { String::new() } else { format!(" {}", m.text) };
            let saved = a.saved_path.as_ref().map(|p| format!(" (saved to {p})")).unwrap_or_default();
            let id = if a.saved_path.is_none() && !m.outgoing {
                format!(" (tamizdat save {})", m.id)
            } else {
                String::new()
            };
            format!("[{} {}, {}]{caption}{saved}{id}", a.kind, a.name, human_size(a.size))
        }
        None => m.text.clone(),
    };
    let text = match &m.reply_to {
        Some(r) => format!("(re {}: {}) {text}", r.sender.as_deref().unwrap_or("?"), r.text),
        None => text,
    };
    if m.kind == "event" {
        println!("{} [{}] {}", format_time(m.sent_at), m.conversation, text);
    } else if m.group {
        println!("{} [{}] {}: {text}{state}", format_time(m.sent_at), m.conversation, m.sender);
    } else {
        println!("{} {}: {text}{state}", format_time(m.sent_at), m.sender);
    }
}

/// `512 bytes`, `2.1 MB`: decimal units, as file managers show them.
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

/// TEXT as given, or standard input for `-`.
fn read_text(text: &str) -> Result<String, Failure> {
    if text != "-" {
        return Ok(text.to_string());
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Failure(format!("cannot read standard input as text: {e}")))?;
    Ok(s)
}

/// Transfer progress on stderr: with --json one JSON line per step (`{"done":…,"total":…}`, the
/// first one saying where a resumed transfer starts); on a terminal a line redrawn at most ten
/// times a second; otherwise nothing.
struct Progress {
    json: bool,
    bar: bool,
    label: String,
    started: std::time::Instant,
    first: Option<u64>,
    drawn: Option<std::time::Instant>,
}

impl Progress {
    fn new(json: bool, label: &str) -> Self {
        let bar = !json && std::io::stderr().is_terminal();
        Self { json, bar, label: label.to_string(), started: std::time::Instant::now(), first: None, drawn: None }
    }

    fn update(&mut self, done: u64, total: u64) {
        if self.json {
            eprintln!("{}", serde_json::json!({ "done": done, "total": total }));
            return;
        }
        // The rate counts from the first report: hashing and connecting come before it.
        let first = *self.first.get_or_insert_with(|| {
            self.started = std::time::Instant::now();
            done
        });
        if !self.bar || self.drawn.is_some_and(|t| t.elapsed() < Duration::from_millis(100) && done < total) {
            return;
        }
        let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done.saturating_sub(first) as f64 / secs / 1e6;
        eprint!("\r{}: {percent:>3}%  {} of {}  {rate:.1} MB/s\x1b[K", self.label, human_size(done), human_size(total));
        let _ = std::io::stderr().flush();
        self.drawn = Some(std::time::Instant::now());
    }

    fn finish(&mut self) {
        if self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// `YYYY-MM-DD HH:MM` in UTC from Unix milliseconds.
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let (year, month, d) = tamizdat_wire::civil::date_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}")
}

/// Whether a link fits in a QR code at all.
fn fits_qr(link: &str) -> bool {
    qrcode::QrCode::with_error_correction_level(link.as_bytes(), qrcode::EcLevel::L).is_ok()
}

fn print_qr(link: &str) {
    match qrcode::QrCode::with_error_correction_level(link.as_bytes(), qrcode::EcLevel::L) {
        Ok(code) => {
            let image = code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build();
            println!("{image}");
        }
        Err(_) => eprintln!("(this invite is too long for a QR code; send the link as text)"),
    }
}

async fn relay(cli: &Cli, command: &RelayCommand) -> Result<(), Failure> {
    match command {
        RelayCommand::Add { link } => {
            let mut client = open(cli)?;
            let added = client.add_relay_link(link)?;
            if cli.json {
                print_json(&serde_json::json!({ "added": added }))?;
            } else if added.is_empty() {
                println!("nothing new: every endpoint of that link was already known");
            } else {
                println!("added {}; `tamizdat sync` uses whichever way works", added.join(", "));
            }
            Ok(())
        }
        RelayCommand::Endpoints => {
            let client = open(cli)?;
            let endpoints = client.relay_endpoints()?;
            if cli.json {
                print_json(&endpoints)?;
            } else {
                for e in endpoints {
                    let ok = e.last_ok.map(|t| format!(", worked {}", format_time(t * 1000))).unwrap_or_default();
                    println!("{}  ({}, {}{ok})", e.endpoint, e.kind, e.source);
                }
            }
            Ok(())
        }

        RelayCommand::Init { data, public } => {
            let identity = RelayIdentity::load_or_create(data, public, "127.0.0.1:443")?;
            println!("{}", identity.link());
            Ok(())
        }
        RelayCommand::Link { data, only } => {
            let identity = RelayIdentity::load(data)?.ok_or_else(|| {
                Failure(format!(
                    "{} holds no relay; create one with `tamizdat relay init --data {}`",
                    data.display(),
                    data.display()
                ))
            })?;
            println!("{}", relay_link(identity.descriptor(), &pt_bridge_lines(data), only)?);
            Ok(())
        }
        RelayCommand::Serve { data, config, listen, admin, public, retention, store, pt, shards } => {
            let file = match config {
                Some(path) => RelayFile::read(path)?,
                None => RelayFile::default(),
            };
            let retention = match (retention, &file.retention) {
                (Some(r), _) => *r,
                (None, Some(r)) => parse_duration(r).map_err(|e| Failure(format!("config retention: {e}")))?,
                (None, None) => DEFAULT_RETENTION,
            };
            let config = RelayConfig {
                data: data.clone(),
                listen: listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 443))),
                public: if public.is_empty() { file.public.clone() } else { public.clone() },
                retention,
                store: store.as_deref().or(file.store.as_deref()).map(tamizdat_relay::store::StoreLocation::parse),
                limits: file.limits.clone(),
                durability: file.durability,
                admin: admin.or(file.admin),
                shards: shards.map_or(file.shards, usize::from).max(1),
            };
            let relay = Relay::bind(config).await?;
            // Pluggable transports listen on their own ports and forward to ours.
            let mut pt_servers = Vec::new();
            let mut lines = Vec::new();
            if !pt.is_empty() {
                let mut own = relay.local_addr().ok_or_else(|| Failure("the relay has no address".into()))?;
                if own.ip().is_unspecified() {
                    own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                for (name, addr) in pt {
                    let server = tamizdat_transport::pt::serve(name, *addr, *addr, own, &data.join("pt-state"))
                        .await
                        .map_err(|e| Failure(e.to_string()))?;
                    lines.push(server.bridge_line.clone());
                    pt_servers.push(server);
                }
            }
            save_pt_bridge_lines(data, &lines)?;
            let descriptor =
                tamizdat_wire::proto::RelayDescriptor::from_link(&relay.link()).map_err(|e| Failure(e.to_string()))?;
            println!("{}", relay_link(descriptor, &lines, &[])?);
            let _ = std::io::stdout().flush();
            if let Some(addr) = relay.local_addr() {
                eprintln!("relay listening on {addr}; give people the link above (Ctrl-C stops)");
            }
            relay.run(shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Where `relay serve` records the bridge lines of its pluggable transports for `relay link`.
const PT_LINES: &str = "pt-bridges.txt";

fn pt_bridge_lines(data: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(data.join(PT_LINES))
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

fn save_pt_bridge_lines(data: &std::path::Path, lines: &[String]) -> Result<(), Failure> {
    let path = data.join(PT_LINES);
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))
}

/// The relay link with its pluggable-transport bridge lines, restricted to `only` if given.
fn relay_link(
    mut descriptor: tamizdat_wire::proto::RelayDescriptor,
    pt_lines: &[String],
    only: &[String],
) -> Result<String, Failure> {
    descriptor.endpoints.extend(pt_lines.iter().cloned());
    if !only.is_empty() {
        descriptor.endpoints.retain(|e| {
            let kind = e.parse::<tamizdat_wire::endpoint::Endpoint>().map(|p| p.kind()).unwrap_or_default();
            only.iter().any(|o| o == e || o == kind || e.starts_with(&format!("{o} ")))
        });
    }
    descriptor.validate().map_err(|e| Failure(format!("no such endpoint in this relay's link ({e})")))?;
    Ok(descriptor.to_link())
}

/// The relay's configuration file (TOML). Flags given on the command line win.
#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RelayFile {
    listen: Option<SocketAddr>,
    public: Vec<String>,
    store: Option<String>,
    retention: Option<String>,
    admin: Option<SocketAddr>,
    shards: usize,
    durability: tamizdat_relay::store::Durability,
    limits: tamizdat_relay::Limits,
}

impl RelayFile {
    fn read(path: &std::path::Path) -> Result<Self, Failure> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Failure(format!("{}: {}", path.display(), e.message())))
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
