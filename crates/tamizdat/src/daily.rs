//! Commands for living in a conversation: the conversation list, read marks, edits, deletion,
//! reactions, disappearing timers and safety numbers.

use tamizdat_client::format_timer;

use crate::{Cli, Command, Failure, format_time, open, print_json, print_message, print_qr};

pub(crate) async fn run(cli: &Cli) -> Result<(), Failure> {
    let mut client = open(cli)?;
    let result = command(cli, &mut client).await;
    client.close().await;
    result
}

async fn command(cli: &Cli, client: &mut tamizdat_client::Client) -> Result<(), Failure> {
    let changed = match &cli.command {
        Command::Conversations => {
            let list = client.conversations()?;
            if cli.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("No conversations yet. `tamizdat invite` makes a link to send someone.");
            }
            for c in list {
                let unread = if c.unread > 0 { format!(" ({} unread)", c.unread) } else { String::new() };
                let mut marks = String::new();
                if c.verified {
                    marks.push_str(" [verified]");
                }
                if c.key_changed {
                    marks.push_str(" [SAFETY NUMBER CHANGED]");
                }
                if c.expire_secs > 0 {
                    marks.push_str(&format!(" [disappearing: {}]", format_timer(c.expire_secs)));
                }
                let last = c
                    .last
                    .map(|m| format!("  {} {}: {}", format_time(m.sent_at), m.sender, preview(&m.text)))
                    .unwrap_or_default();
                println!("{}{unread}{marks}{last}", c.name);
            }
            return Ok(());
        }
        Command::Read { contact } => {
            let n = client.mark_read(contact).await?;
            if cli.json {
                return print_json(&serde_json::json!({ "conversation": contact, "marked_read": n }));
            }
            println!("{n} messages marked read");
            return Ok(());
        }
        Command::Edit { contact, message, text } => client.edit(contact, message, text).await?,
        Command::Delete { contact, message } => client.delete(contact, message).await?,
        Command::React { contact, message, emoji, remove: _ } => {
            client.react(contact, message, emoji.as_deref().unwrap_or("")).await?
        }
        Command::Expire { contact, after } => client.set_expiry(contact, *after).await?,
        Command::Verify { contact, mark, unmark, accept } => {
            return verify(cli, client, contact, *mark, *unmark, *accept);
        }
        _ => return Err(Failure("not a conversation command".into())),
    };
    if cli.json {
        print_json(&changed)
    } else {
        print_message(&changed);
        Ok(())
    }
}

fn verify(
    cli: &Cli,
    client: &mut tamizdat_client::Client,
    contact: &str,
    mark: bool,
    unmark: bool,
    accept: bool,
) -> Result<(), Failure> {
    let view = if mark {
        client.mark_verified(contact, true)?
    } else if unmark {
        client.mark_verified(contact, false)?
    } else if accept {
        client.accept_key_change(contact)?
    } else {
        client.verify(contact)?
    };
    if cli.json {
        return print_json(&view);
    }
    if view.key_changed_at.is_some() {
        println!(
            "WARNING: {}'s safety number changed. Compare it again before you trust this contact.\n",
            view.contact
        );
    }
    println!("Safety number with {}:\n\n{}\n", view.contact, view.grouped());
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print_qr(&view.qr_payload);
    }
    if view.verified {
        println!("{} is verified.", view.contact);
    } else {
        println!(
            "Compare these digits with {} in person or on a call (or scan each other's code); if they match, run `tamizdat verify {} --mark`.",
            view.contact, view.contact
        );
    }
    Ok(())
}

/// The first line of a text, shortened for a list.
fn preview(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut short: String = line.chars().take(60).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}
