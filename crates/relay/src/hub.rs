//! Routes "something new under this id" notices to the sessions subscribed to that id.
//!
//! A notice wakes only its subscribers: with a broadcast channel every committed entry woke
//! every subscribed session, so the cost of one message grew with the number of connections.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, mpsc};

use crate::store::Notice;

/// Notices one session may have waiting before it is told to look at everything instead.
const INBOX: usize = 256;
/// Entry bytes one batch of notices carries; later notices in the batch go without their
/// entries. With the inbox's notices (whose entries are shared by every subscriber), this
/// bounds what a session that stops reading makes the relay hold for it alone.
const BATCH_ENTRY_BYTES: usize = 64 * 1024;

/// The subscription table, shared by the store (which publishes) and every session.
#[derive(Default)]
pub struct NoticeHub {
    routes: Mutex<HashMap<Vec<u8>, Vec<Arc<Inbox>>>>,
    next_inbox: AtomicU64,
}

struct Inbox {
    key: u64,
    tx: mpsc::Sender<Notice>,
    /// A notice did not fit: the session resyncs everything it watches.
    lagged: AtomicBool,
    /// Wakes the session after `lagged` is set, in case it had already emptied the inbox.
    wake: Notify,
}

impl Inbox {
    /// Notices were lost: the session must look at everything, and is woken to do so even
    /// if it already took every notice that fitted.
    fn lag(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl NoticeHub {
    /// A listener with no subscriptions yet.
    pub fn listener(self: &Arc<Self>) -> Listener {
        let (tx, rx) = mpsc::channel(INBOX);
        let key = self.next_inbox.fetch_add(1, Ordering::Relaxed);
        Listener {
            hub: self.clone(),
            inbox: Arc::new(Inbox { key, tx, lagged: AtomicBool::new(false), wake: Notify::new() }),
            rx,
            ids: Vec::new(),
            bare: HashSet::new(),
        }
    }

    /// Delivers notices to their subscribers. An empty id is for everyone: notices may have
    /// been lost (a database listener reconnected), so every session looks again.
    pub fn publish(&self, notices: &[Notice]) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        for notice in notices {
            if notice.id.is_empty() {
                for inbox in routes.values().flatten() {
                    inbox.lag();
                }
                continue;
            }
            for inbox in routes.get(&notice.id).into_iter().flatten() {
                if inbox.tx.try_send(notice.clone()).is_err() {
                    inbox.lag();
                }
            }
        }
    }

    /// Ids with at least one subscriber.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One session's subscriptions; they end when it is dropped.
pub struct Listener {
    hub: Arc<NoticeHub>,
    inbox: Arc<Inbox>,
    rx: mpsc::Receiver<Notice>,
    ids: Vec<Vec<u8>>,
    /// Watched ids whose subscriber did not ask for entries inside notices.
    bare: HashSet<Vec<u8>>,
}

impl Listener {
    /// Subscribes to one more id (again is harmless, and says again whether notices for it
    /// carry entries).
    pub fn watch(&mut self, id: Vec<u8>, entries: bool) {
        if entries {
            self.bare.remove(&id);
        } else {
            self.bare.insert(id.clone());
        }
        if self.ids.contains(&id) {
            return;
        }
        let mut routes = self.hub.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.entry(id.clone()).or_default().push(self.inbox.clone());
        self.ids.push(id);
    }

    /// The ids watched.
    pub fn ids(&self) -> &[Vec<u8>] {
        &self.ids
    }

    /// The next notices to push: every one waiting (so they leave in one write), or, when
    /// some were lost, a "look again" (sequence 0) for every watched id. Pending forever
    /// while nothing is watched.
    pub async fn next(&mut self) -> Vec<Notice> {
        loop {
            let first = tokio::select! {
                biased;
                () = self.inbox.wake.notified() => None,
                n = self.rx.recv() => match n {
                    Some(n) => Some(n),
                    None => return std::future::pending().await,
                },
            };
            if self.inbox.lagged.swap(false, Ordering::Acquire) {
                while self.rx.try_recv().is_ok() {}
                return self.ids.iter().map(|id| Notice::bare(id.clone(), 0)).collect();
            }
            // Woken for a loss already answered: wait again.
            let Some(first) = first else { continue };
            let mut notices = vec![first];
            while let Ok(more) = self.rx.try_recv() {
                notices.push(more);
            }
            let mut entry_bytes = 0;
            for n in &mut notices {
                let size = n.entry.as_ref().map_or(0, |e| e.payload.len());
                if size > 0 && (self.bare.contains(&n.id) || entry_bytes + size > BATCH_ENTRY_BYTES) {
                    n.entry = None;
                } else {
                    entry_bytes += size;
                }
            }
            return notices;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut routes = self.hub.routes.lock().unwrap_or_else(PoisonError::into_inner);
        for id in &self.ids {
            if let Some(inboxes) = routes.get_mut(id) {
                inboxes.retain(|i| i.key != self.inbox.key);
                if inboxes.is_empty() {
                    routes.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(id: u8, seq: u64) -> Notice {
        Notice::bare(vec![id; 16], seq)
    }

    fn with_entry(id: u8, seq: u64) -> Notice {
        Notice::stored(&[id; 16], seq, &[9; 16], b"ciphertext", 1)
    }

    /// A hub with one listener watching `(id, with entries)` for each of `watched`.
    fn listening(watched: &[(u8, bool)]) -> (Arc<NoticeHub>, Listener) {
        let hub = Arc::new(NoticeHub::default());
        let mut listener = hub.listener();
        for &(id, entries) in watched {
            listener.watch(vec![id; 16], entries);
        }
        (hub, listener)
    }

    #[tokio::test]
    async fn a_notice_reaches_only_its_subscribers() {
        let hub = Arc::new(NoticeHub::default());
        let (mut a, mut b) = (hub.listener(), hub.listener());
        a.watch(vec![1; 16], false);
        b.watch(vec![2; 16], false);
        hub.publish(&[notice(1, 7)]);
        assert_eq!(a.next().await, vec![notice(1, 7)]);
        assert!(b.rx.try_recv().is_err(), "b watches another id");
        drop(a);
        assert_eq!(hub.watched(), 1, "a's route went with it");
    }

    #[tokio::test]
    async fn waiting_notices_leave_together_in_order() {
        let (hub, mut a) = listening(&[(1, true), (2, false)]);
        hub.publish(&[with_entry(1, 1), with_entry(2, 1), with_entry(1, 2)]);
        assert_eq!(a.next().await, vec![with_entry(1, 1), notice(2, 1), with_entry(1, 2)]);
        hub.publish(&[with_entry(1, 3)]);
        assert_eq!(a.next().await, vec![with_entry(1, 3)]);
    }

    #[tokio::test]
    async fn an_overflowing_inbox_turns_into_one_resync() {
        let (hub, mut a) = listening(&[(1, false), (3, false)]);
        let flood: Vec<Notice> = (1..=INBOX as u64 + 10).map(|s| notice(1, s)).collect();
        hub.publish(&flood);
        let pushed = a.next().await;
        assert_eq!(pushed, vec![notice(1, 0), notice(3, 0)]);
        hub.publish(&[notice(3, 1)]);
        assert_eq!(a.next().await, vec![notice(3, 1)], "back to single notices");
    }

    #[tokio::test]
    async fn entries_reach_only_subscribers_who_asked_for_them() {
        let hub = Arc::new(NoticeHub::default());
        let (mut a, mut b) = (hub.listener(), hub.listener());
        a.watch(vec![1; 16], true);
        b.watch(vec![1; 16], false);
        hub.publish(&[with_entry(1, 4)]);
        let pushed = a.next().await;
        assert_eq!(pushed, vec![with_entry(1, 4)]);
        assert_eq!(pushed[0].entry.as_ref().map(|e| e.payload.as_slice()), Some(&b"ciphertext"[..]));
        assert_eq!(b.next().await, vec![notice(1, 4)], "b gets the id and sequence only");
        b.watch(vec![1; 16], true);
        hub.publish(&[with_entry(1, 5)]);
        assert_eq!(b.next().await, vec![with_entry(1, 5)], "subscribing again changes the choice");
    }

    #[test]
    fn only_small_entries_are_pushed() {
        let small = Notice::stored(&[1; 16], 1, &[9; 16], &[0; tamizdat_wire::limits::MAX_PUSHED_PAYLOAD], 1);
        let big = Notice::stored(&[1; 16], 2, &[9; 16], &[0; tamizdat_wire::limits::MAX_PUSHED_PAYLOAD + 1], 1);
        assert!(small.entry.is_some());
        assert!(big.entry.is_none());
    }

    #[tokio::test]
    async fn a_batch_carries_a_bounded_amount_of_entries() {
        let (hub, mut a) = listening(&[(1, true)]);
        let big = |seq| Notice::stored(&[1; 16], seq, &[9; 16], &[0; tamizdat_wire::limits::MAX_PUSHED_PAYLOAD], 1);
        let count = BATCH_ENTRY_BYTES / tamizdat_wire::limits::MAX_PUSHED_PAYLOAD + 5;
        hub.publish(&(1..=count as u64).map(big).collect::<Vec<_>>());
        let pushed = a.next().await;
        assert_eq!(pushed.len(), count, "every notice, in order");
        let carried = pushed.iter().take_while(|n| n.entry.is_some()).count();
        assert_eq!(carried, BATCH_ENTRY_BYTES / tamizdat_wire::limits::MAX_PUSHED_PAYLOAD);
        assert!(pushed[carried..].iter().all(|n| n.entry.is_none()), "the rest go without entries");
    }

    #[tokio::test]
    async fn a_loss_after_the_inbox_was_emptied_still_wakes_the_session() {
        let (_hub, mut a) = listening(&[(1, true)]);
        // The session has taken everything; then a notice is lost (as when the inbox was full
        // a moment before): it must still be told to look again.
        a.inbox.lag();
        let pushed = tokio::time::timeout(std::time::Duration::from_secs(1), a.next()).await;
        assert_eq!(pushed.expect("woken"), vec![notice(1, 0)]);
    }

    #[tokio::test]
    async fn an_empty_id_asks_everyone_to_look_again() {
        let (hub, mut a) = listening(&[(1, false)]);
        hub.publish(&[Notice::bare(Vec::new(), 0)]);
        assert_eq!(a.next().await, vec![notice(1, 0)]);
    }
}
