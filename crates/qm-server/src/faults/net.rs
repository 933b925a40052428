//! The simulated network and the seeded random numbers everything draws from.

use std::collections::BTreeMap;

use qm_proto::{Command, Heartbeat, RegisterRequest, TaskKey};
use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

/// The simulation's seeded random stream: SplitMix64 from `rand_xoshiro`, as the simulator's
/// (`qm_sim::rng`), which this crate does not depend on.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::from_seed(seed.to_le_bytes()))
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.next_u64() % n
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What an agent asks of the server.
#[derive(Clone, Debug)]
pub enum Up {
    Register(RegisterRequest),
    /// A heartbeat, and when the agent sent it (its own clock).
    Heartbeat(Heartbeat, u64),
    Poll,
}

/// What the server answers.
#[derive(Clone, Debug)]
pub enum Down {
    Registered(String),
    Refused(String),
    /// The token is unknown (401).
    Unauthorized,
    /// The heartbeat sent at this time (the agent's clock) was taken; these exits are
    /// reported.
    HeartbeatAck(Vec<TaskKey>, u64),
    Commands(Vec<Command>),
}

#[derive(Clone, Debug)]
pub enum Msg {
    ToServer { node: usize, token: String, up: Up },
    ToAgent { node: usize, down: Down },
}

impl Msg {
    fn node(&self) -> usize {
        match self {
            Msg::ToServer { node, .. } | Msg::ToAgent { node, .. } => *node,
        }
    }
}

/// Messages in flight, by delivery time; nodes cut off from the server.
#[derive(Default)]
pub struct Network {
    queue: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    cut_until: BTreeMap<usize, u64>,
    pub lost: u64,
    pub duplicated: u64,
}

impl Network {
    /// How long a message takes: a few milliseconds, and under faults now and then seconds
    /// (which reorders it behind later ones).
    pub fn delay(&mut self, rng: &mut Rng, faults: bool) -> u64 {
        if faults && rng.chance(0.05) {
            100 + rng.below(3_000)
        } else {
            1 + rng.below(20)
        }
    }

    /// Sends a message to arrive at `at`; under faults it may be lost or arrive twice.
    pub fn send(&mut self, msg: Msg, at: u64, rng: &mut Rng, faults: bool) {
        if faults && rng.chance(0.02) {
            self.lost += 1;
            return;
        }
        if faults && rng.chance(0.01) {
            self.duplicated += 1;
            let again = at + rng.below(2_000);
            self.push(msg.clone(), again);
        }
        self.push(msg, at);
    }

    fn push(&mut self, msg: Msg, at: u64) {
        self.seq += 1;
        self.queue.insert((at, self.seq), msg);
    }

    /// The messages due by `now`, in order; those to or from a node cut off are lost.
    pub fn due(&mut self, now: u64) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let msg = entry.remove();
            if self.cut(msg.node(), now) {
                self.lost += 1;
                continue;
            }
            out.push(msg);
        }
        out
    }

    pub fn cut(&self, node: usize, now: u64) -> bool {
        self.cut_until.get(&node).is_some_and(|&u| now < u)
    }

    pub fn partition(&mut self, node: usize, until: u64) {
        self.cut_until.insert(node, until);
    }

    /// No more cuts.
    pub fn heal(&mut self) {
        self.cut_until.clear();
    }
}
