//! Group commit: the store's writes, gathered and synced together.
//!
//! A change is applied to the state in memory under the server's lock and *queued* here, which
//! takes microseconds; the lock is then free for the next request. One write at a time goes
//! to the store ([`Journal::flush`]), taking everything queued so far as one transaction, so
//! one sync serves every request that arrived while the previous one was being synced. Each
//! queued change gets a *ticket*; nothing leaves the process on the strength of a change until
//! its ticket is durable: an API answer waits for it ([`Journal::wait`]), and a command for an
//! agent is held back until then (`Inner::take_commands`). Everything queued is written in
//! ticket order, so a crash loses at most a tail of unacknowledged changes, and what survives
//! is a prefix of what was applied.
//!
//! Reads see the state in memory, which may include changes not yet durable (another
//! client's submission a few milliseconds before its answer); a crash in between loses them
//! together with the answer that was never given.
//!
//! Lock order: the server's lock, then this queue's; the store's lock, then this queue's.
//! Nobody holding the queue's lock takes another, and the store's lock is never taken under
//! the server's lock, so a slow sync never holds up requests that only need memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use qm_core::{ClusterState, Event};
use qm_store::{Batch, EndedJob, JobPayload, NodeRecord, Store, StoreError, TokenRecord};

/// Everything queued since the last write, in order.
#[derive(Default)]
struct Queue {
    /// The last ticket handed out.
    ticket: u64,
    /// The sequence number the store gives the last queued event.
    seq: u64,
    writes: Writes,
    /// The server is closing: the flusher writes what is queued and ends.
    closing: bool,
}

/// The rows of one store write.
#[derive(Default)]
struct Writes {
    events: Vec<Event>,
    payloads: Vec<(u64, JobPayload)>,
    exits: Vec<((u64, u32, u32), i32)>,
    tokens: Vec<TokenRecord>,
    nodes: Vec<NodeRecord>,
    ended: Vec<EndedJob>,
    usage: Vec<qm_store::UsageRow>,
    /// The state as of event `seq`, with the server's derived data, to be saved once the
    /// events up to it are.
    snapshot: Option<(u64, Box<ClusterState>, String)>,
}

/// Counts of what the journal wrote, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flushes {
    /// Store transactions written.
    pub writes: u64,
    /// Tickets (changes) they carried.
    pub tickets: u64,
    /// The most tickets one write carried.
    pub most: u64,
}

pub(crate) struct Journal {
    store: Mutex<Box<dyn Store>>,
    queue: Mutex<Queue>,
    /// Signalled when something is queued or the server closes.
    queued: Condvar,
    /// The last ticket that is durable.
    durable: tokio::sync::watch::Sender<u64>,
    flushes: Mutex<Flushes>,
}

impl Journal {
    /// A journal over `store`, whose last event is `seq`.
    pub fn new(store: Box<dyn Store>, seq: u64) -> Journal {
        Journal {
            store: Mutex::new(store),
            queue: Mutex::new(Queue {
                seq,
                ..Queue::default()
            }),
            queued: Condvar::new(),
            durable: tokio::sync::watch::channel(0).0,
            flushes: Mutex::new(Flushes::default()),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .expect("the journal's queue lock is poisoned")
    }

    /// The store, for what is not queued: task logs (their own durability, answered by the
    /// log handler itself) and reads. Never taken under the server's lock.
    pub fn store(&self) -> MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().expect("the store's lock is poisoned")
    }

    /// Gives the store back (the journal's last holder; a simulated crash).
    pub fn into_store(self) -> Box<dyn Store> {
        self.store
            .into_inner()
            .expect("the store's lock is poisoned")
    }

    /// Queues a change; returns its ticket and the sequence number of its last event.
    fn push(&self, f: impl FnOnce(&mut Queue)) -> u64 {
        let mut q = self.queue();
        f(&mut q);
        q.ticket += 1;
        let t = q.ticket;
        drop(q);
        self.queued.notify_one();
        t
    }

    /// Queues events, the payloads of the jobs they submit and the records of those they
    /// forget, to be written together; returns the sequence number the store will give the
    /// last event.
    pub fn events(
        &self,
        events: &[Event],
        payloads: &[(u64, JobPayload)],
        ended: Vec<EndedJob>,
    ) -> u64 {
        let mut seq = 0;
        self.push(|q| {
            q.writes.events.extend_from_slice(events);
            q.writes.payloads.extend_from_slice(payloads);
            q.writes.ended.extend(ended);
            q.seq += events.len() as u64;
            seq = q.seq;
        });
        seq
    }

    pub fn exit(&self, key: (u64, u32, u32), code: i32) {
        self.push(|q| q.writes.exits.push((key, code)));
    }

    pub fn token(&self, t: TokenRecord) {
        self.push(|q| q.writes.tokens.push(t));
    }

    pub fn node(&self, n: NodeRecord) {
        self.push(|q| q.writes.nodes.push(n));
    }

    /// Queues the teams' usage samples.
    pub fn usage(&self, rows: Vec<qm_store::UsageRow>) {
        self.push(|q| q.writes.usage.extend(rows));
    }

    /// Queues a snapshot of `state` as of event `seq`, saved after the events up to it.
    pub fn snapshot(&self, seq: u64, state: ClusterState, extra: String) {
        self.push(|q| q.writes.snapshot = Some((seq, Box::new(state), extra)));
    }

    /// The last ticket handed out: once it is durable, so is every change queued so far.
    pub fn queued(&self) -> u64 {
        self.queue().ticket
    }

    /// The last ticket that is durable.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn flushes(&self) -> Flushes {
        *self
            .flushes
            .lock()
            .expect("the journal's counts are poisoned")
    }

    /// Writes everything queued as one transaction, then the queued snapshot (a failed
    /// snapshot loses nothing: the events are stored, and the next one retries). An error
    /// means the store refused events already applied in memory: the caller must stop.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut store = self.store();
        let (ticket, seq, taken) = {
            let mut q = self.queue();
            (q.ticket, q.seq, std::mem::take(&mut q.writes))
        };
        let from = self.durable();
        if ticket == from {
            return Ok(());
        }
        let last = store.append(Batch {
            events: &taken.events,
            payloads: &taken.payloads,
            exits: &taken.exits,
            tokens: &taken.tokens,
            nodes: &taken.nodes,
            ended: &taken.ended,
            usage: &taken.usage,
        })?;
        if !taken.events.is_empty() && last != seq {
            return Err(StoreError(format!(
                "the store numbered the last event of a write {last}, not {seq}: another writer?"
            )));
        }
        self.durable.send_replace(ticket);
        {
            let mut f = self
                .flushes
                .lock()
                .expect("the journal's counts are poisoned");
            f.writes += 1;
            f.tickets += ticket - from;
            f.most = f.most.max(ticket - from);
        }
        if let Some((seq, state, extra)) = taken.snapshot {
            if let Err(e) = store.snapshot(seq, &state, &extra) {
                eprintln!("qm server: snapshot at event {seq} failed: {e}");
            }
        }
        Ok(())
    }

    /// Makes `ticket` durable before returning, writing what is queued in this thread if no
    /// one else has. The process exits if the store refuses (see [`fatal`]).
    pub fn flush_to(&self, ticket: u64) {
        while self.durable() < ticket {
            if let Err(e) = self.flush() {
                fatal(&e);
            }
        }
    }

    /// Waits until `ticket` is durable (the flusher thread writes it).
    pub async fn wait(&self, ticket: u64) {
        if self.durable() >= ticket {
            return;
        }
        self.queued.notify_one();
        let mut rx = self.durable.subscribe();
        // The sender lives as long as the journal, which outlives this borrow.
        let _ = rx.wait_for(|d| *d >= ticket).await;
    }

    /// The flusher: writes whatever is queued as soon as the previous write is done, until
    /// [`Journal::close`]; what was queued before closing is written first.
    pub fn run(self: Arc<Self>) {
        loop {
            {
                let q = self.queue();
                let q = self
                    .queued
                    .wait_while(q, |q| q.ticket == self.durable() && !q.closing)
                    .expect("the journal's queue lock is poisoned");
                if q.closing && q.ticket == self.durable() {
                    return;
                }
            }
            if let Err(e) = self.flush() {
                fatal(&e);
            }
        }
    }

    /// Ends [`Journal::run`] once what is queued is written.
    pub fn close(&self) {
        self.queue().closing = true;
        self.queued.notify_all();
    }
}

/// The store refused events the state already holds: stop rather than act on what a restart
/// would not see. Nothing unstored was acknowledged.
pub(crate) fn fatal(e: &StoreError) -> ! {
    eprintln!(
        "qm server: fatal: the store refused a write ({e}); exiting so that a restart reloads what is stored"
    );
    std::process::exit(70);
}
