//! The TUI with a pretend worker, for trying it in a real terminal:
//! `cargo run -p tamizdat-tui --bin tamizdat-tui-demo`. Sent messages go through sending, sent,
//! delivered and read; Alice types and answers; the connection changes from direct to a
//! bridge when "the relay is blocked". No network, no client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tamizdat_tui::{
    Action, Attachment, ChatMessage, ConnectionStatus, ConversationSummary, MessageKind, MessageState, Quote, Reaction,
    Route, Update,
};
use tokio::sync::mpsc;

const MIN: u64 = 60_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn msg(id: &str, sender: &str, text: &str, at: u64) -> ChatMessage {
    ChatMessage { id: id.into(), sender: sender.into(), text: text.into(), sent_at_ms: at, ..Default::default() }
}

fn mine(id: &str, text: &str, at: u64, state: MessageState) -> ChatMessage {
    ChatMessage { outgoing: true, state, ..msg(id, "You", text, at) }
}

struct World {
    conversations: Vec<ConversationSummary>,
    alice: Vec<ChatMessage>,
    club: Vec<ChatMessage>,
    bob: Vec<ChatMessage>,
    next: u64,
}

impl World {
    fn new(now: u64) -> Self {
        let conversations = vec![
            ConversationSummary {
                id: "alice".into(),
                name: "Alice".into(),
                unread: 1,
                last_text: "Perfect, thanks for the menu".into(),
                last_at_ms: Some(now - 20 * MIN),
                verified: true,
                ..Default::default()
            },
            ConversationSummary {
                id: "club".into(),
                name: "Book club".into(),
                is_group: true,
                unread: 2,
                last_text: "Yusuf: Yes, and bring the snacks".into(),
                last_at_ms: Some(now - 38 * MIN),
                expire_secs: Some(86_400),
                ..Default::default()
            },
            ConversationSummary {
                id: "bob".into(),
                name: "Bob".into(),
                last_text: "You: the keys are under the mat".into(),
                last_at_ms: Some(now - 2 * 86_400_000),
                key_changed: true,
                ..Default::default()
            },
        ];
        let alice = vec![
            msg("a1", "Alice", "Are we still on for dinner tomorrow?", now - 86_400_000),
            ChatMessage {
                reactions: vec![Reaction { emoji: "❤".into(), count: 1, mine: false }],
                ..mine("a2", "Yes! 7pm at the usual place", now - 86_400_000 + 10 * MIN, MessageState::Read)
            },
            msg("a3", "Alice", "Could you bring the menu from last time?", now - 35 * MIN),
            ChatMessage {
                kind: MessageKind::File,
                attachment: Some(Attachment { name: "menu.pdf".into(), size: 250_880, saved: false }),
                ..mine("a4", "", now - 30 * MIN, MessageState::Read)
            },
            ChatMessage {
                reply_to: Some(Quote { sender: "You".into(), snippet: "Yes! 7pm at the usual place".into() }),
                ..msg("a5", "Alice", "Perfect, thanks for the menu", now - 20 * MIN)
            },
        ];
        let club = vec![
            ChatMessage {
                kind: MessageKind::Event,
                ..msg("c0", "", "Dana set disappearing messages to 1 day", now - 3 * 60 * MIN)
            },
            ChatMessage {
                expires_at_ms: Some(now + 20 * 60 * MIN),
                ..msg("c1", "Dana", "Chapter 4 tonight?", now - 40 * MIN)
            },
            ChatMessage {
                expires_at_ms: Some(now + 21 * 60 * MIN),
                ..msg("c2", "Yusuf", "Yes, and bring the snacks", now - 38 * MIN)
            },
        ];
        let bob = vec![mine("b1", "the keys are under the mat", now - 2 * 86_400_000, MessageState::Read)];
        World { conversations, alice, club, bob, next: 100 }
    }

    fn messages(&mut self, id: &str) -> &mut Vec<ChatMessage> {
        match id {
            "alice" => &mut self.alice,
            "club" => &mut self.club,
            _ => &mut self.bob,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let (updates, updates_rx) = mpsc::channel(256);
    let (actions_tx, actions) = mpsc::channel(256);
    tokio::spawn(worker(updates, actions));
    tamizdat_tui::run(updates_rx, actions_tx).await
}

async fn worker(updates: mpsc::Sender<Update>, mut actions: mpsc::Receiver<Action>) {
    let mut world = World::new(now_ms());
    let push = |u: Update| {
        let updates = updates.clone();
        async move {
            let _ = updates.send(u).await;
        }
    };
    push(Update::Conversations(world.conversations.clone())).await;
    push(Update::Status(ConnectionStatus {
        route: Route::Direct,
        endpoint: Some("relay.example.org:443".into()),
        last_ok_ms: Some(now_ms()),
        ..Default::default()
    }))
    .await;
    let censor = updates.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let _ = censor
            .send(Update::Status(ConnectionStatus {
                route: Route::Bridge,
                endpoint: Some("198.51.100.7:443".into()),
                blocked: Some("relay.example.org refused by SNI; using a bridge".into()),
                syncing: false,
                last_ok_ms: Some(now_ms()),
            }))
            .await;
    });
    // What "arrives from the network": state changes and answers, recorded before shown.
    let (arrive, mut arrivals) = mpsc::channel::<(String, ChatMessage)>(64);
    loop {
        let action = tokio::select! {
            action = actions.recv() => match action {
                Some(action) => action,
                None => break,
            },
            Some((conversation, message)) = arrivals.recv() => {
                let list = world.messages(&conversation);
                match list.iter().position(|m| m.id == message.id) {
                    Some(i) => list[i] = message.clone(),
                    None => list.push(message.clone()),
                }
                push(Update::Message { conversation, message }).await;
                continue;
            }
        };
        match action {
            Action::Open(id) => {
                if let Some(c) = world.conversations.iter_mut().find(|c| c.id == id) {
                    c.unread = 0;
                }
                let messages = world.messages(&id).clone();
                push(Update::Messages { conversation: id, messages }).await;
                push(Update::Conversations(world.conversations.clone())).await;
            }
            Action::Send { conversation, text, reply_to } => {
                world.next += 1;
                let quote = reply_to.and_then(|r| world.messages(&conversation).iter().find(|m| m.id == r).cloned());
                let message = ChatMessage {
                    reply_to: quote.map(|q| Quote { sender: q.sender, snippet: q.text }),
                    ..mine(&format!("m{}", world.next), &text, now_ms(), MessageState::Sending)
                };
                world.messages(&conversation).push(message.clone());
                tokio::spawn(deliver(updates.clone(), arrive.clone(), conversation, message));
            }
            Action::Edit { conversation, message, text } => {
                if let Some(m) = world.messages(&conversation).iter_mut().find(|m| m.id == message) {
                    m.text = text;
                    m.edited = true;
                    push(Update::Message { conversation, message: m.clone() }).await;
                }
            }
            Action::Delete { conversation, message } => {
                if let Some(m) = world.messages(&conversation).iter_mut().find(|m| m.id == message) {
                    m.deleted = true;
                    m.text.clear();
                    push(Update::Message { conversation, message: m.clone() }).await;
                }
            }
            Action::React { conversation, message, emoji } => {
                if let Some(m) = world.messages(&conversation).iter_mut().find(|m| m.id == message) {
                    match m.reactions.iter().position(|r| r.emoji == emoji && r.mine) {
                        Some(i) => {
                            m.reactions.remove(i);
                        }
                        None => m.reactions.push(Reaction { emoji, count: 1, mine: true }),
                    }
                    push(Update::Message { conversation, message: m.clone() }).await;
                }
            }
            Action::Save { message, .. } => push(Update::Notice(format!("Saved {message} (pretend)"))).await,
            Action::SendFile { path, .. } => push(Update::Error(format!("{}: no such file", path.display()))).await,
            Action::NewInvite => {
                push(Update::Invite("tamizdat:invite/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygp".into()))
                    .await;
            }
            Action::Retry { .. } | Action::Typing(_) | Action::LoadOlder { .. } => {}
            Action::Quit => break,
        }
    }
}

/// Walks a sent message through its states, then Alice types and answers.
async fn deliver(
    updates: mpsc::Sender<Update>,
    arrive: mpsc::Sender<(String, ChatMessage)>,
    conversation: String,
    mut message: ChatMessage,
) {
    for state in [MessageState::Sent, MessageState::Delivered, MessageState::Read] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        message.state = state;
        let _ = arrive.send((conversation.clone(), message.clone())).await;
    }
    if conversation == "alice" {
        let _ = updates.send(Update::Typing { conversation: conversation.clone(), who: "Alice".into() }).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answer = msg(&format!("{}r", message.id), "Alice", &format!("You said: {}", message.text), now_ms());
        let _ = arrive.send((conversation, answer)).await;
    }
}
