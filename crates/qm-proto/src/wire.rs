//! The named values of the API: states, roles, admissions, idle policies and the reasons a job
//! waits. Each wire name is written once, next to its variant, as an explicit serde name, so
//! renaming a Rust variant never changes the JSON; `tests` pins every name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that is none of an enum's wire names; its `Display` lists the valid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the value names, e.g. `role`.
    pub what: &'static str,
    pub given: String,
    pub valid: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}; valid: {}",
            self.what,
            self.given,
            self.valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

/// A fieldless enum whose serde name, `as_str`, `Display` and `FromStr` are one literal per
/// variant.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        // Written out rather than derived: the derive does not read a serde name that comes
        // through this macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::NAMES.iter().copied()))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every wire name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        given: s.to_string(),
                        valid: Self::NAMES,
                    }),
                }
            }
        }
    };
}

wire_enum! {
    /// Where a job is in its life.
    JobState ("state") {
        Pending = "pending",
        Running = "running",
        Stopping = "stopping",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// Whether the job has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

wire_enum! {
    /// Whether a node takes new work.
    NodeState ("node state") {
        Ready = "ready",
        Draining = "draining",
        Down = "down",
    }
}

wire_enum! {
    /// Whether a running job started inside its team's guarantee or on lent capacity.
    Admission ("admission") {
        Guaranteed = "guaranteed",
        Borrowed = "borrowed",
    }
}

wire_enum! {
    /// What a token may do.
    Role ("role") {
        /// Everything.
        Admin = "admin",
        /// Submit to, list and cancel in its teams.
        Member = "member",
        /// Register nodes (for agents).
        Join = "join",
    }
}

wire_enum! {
    /// What happens to a team's allocation whose GPUs stay idle.
    IdlePolicy ("idle policy") {
        /// Flag the idle job (history, dashboard, metrics); nothing else.
        Warn = "warn",
        /// Flag it, and let any pending job that needs its GPUs preempt it while it stays
        /// idle.
        Yield = "yield",
        /// Yield, then stop and requeue it once it has stayed idle `idle_release_after_s`
        /// beyond the idle window, whatever the demand (the default, after an hour).
        Release = "release",
        /// An older name, read as `yield`.
        Reclaim = "reclaim",
        /// An older name, read as `release`.
        Requeue = "requeue",
    }
}

wire_enum! {
    /// What happened to a job, in its history (`JobEvent::what`).
    JobEventKind ("job event") {
        /// Submitted and accepted.
        Queued = "queued",
        /// Placed and launched.
        Started = "started",
        /// Told to stop (preempted, cancelled, past its time limit or idle).
        Stopping = "stopping",
        /// Back in the queue (preempted, or its run lost its resources).
        Requeued = "requeued",
        /// Every task exited 0.
        Succeeded = "succeeded",
        /// Its run ended otherwise.
        Exited = "exited",
        /// A task failed; the gang is stopped.
        Failed = "failed",
        /// A launched task vanished from its node.
        Lost = "lost",
        /// Its GPUs were seen idle.
        Idle = "idle",
        /// Cancelled.
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// Why a running job was stopped to give its GPUs back.
    PreemptionCause ("cause") {
        /// Its GPUs went back to the team that is guaranteed them.
        Reclaim = "reclaim",
        /// Its GPUs went to a job of its own team with a higher priority.
        Priority = "priority",
        /// Its GPUs sat idle.
        Idle = "idle",
    }
}

wire_enum! {
    /// How a dependency must end for its dependent to start.
    After ("condition") {
        /// Succeeded (Slurm's `afterok`).
        Ok = "ok",
        /// Ended, however (`afterany`).
        Any = "any",
        /// Failed or was cancelled (`afternotok`).
        Failed = "failed",
    }
}

wire_enum! {
    /// The kind of a [`Reason`] (its `kind` field).
    ReasonKind ("reason") {
        Dependency = "dependency",
        DependencyFailed = "dependency_failed",
        ArrayLimit = "array_limit",
        OverMax = "over_max",
        OverCpuMax = "over_cpu_max",
        WaitingForReclaim = "waiting_for_reclaim",
        Reserved = "reserved",
        BehindReservation = "behind_reservation",
        NoPlacement = "no_placement",
        BlockedByHead = "blocked_by_head",
        NoPartition = "no_partition",
        NotPreemptible = "not_preemptible",
        NeedsTimeLimit = "needs_time_limit",
    }
}

/// What one task asks of GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum GpuAsk {
    /// Whole GPUs, exclusively.
    #[serde(rename = "whole")]
    Whole(u32),
    /// A share of one GPU, in milli-GPUs.
    #[serde(rename = "milli")]
    Milli(u32),
}

/// Why a job is not starting now: the scheduling core's reason, field for field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind")]
pub enum Reason {
    /// A job it depends on has not ended yet (`when`: how it must end).
    #[serde(rename = "dependency")]
    Dependency {
        on: u64,
        #[serde(default)]
        when: After,
    },
    /// A job it depends on ended otherwise than `when` asks (or is unknown): it will never
    /// start, and the server ends it.
    #[serde(rename = "dependency_failed")]
    DependencyFailed {
        on: u64,
        #[serde(default)]
        when: After,
    },
    /// As many jobs of its array as the array allows (`max_running`) are running.
    #[serde(rename = "array_limit")]
    ArrayLimit { array: u64, max_running: u32 },
    /// Starting it would put `team` (itself or an ancestor) above its `max`.
    #[serde(rename = "over_max")]
    OverMax {
        team: String,
        model: String,
        used_milli: u64,
        ask_milli: u64,
        max_milli: u64,
    },
    /// Starting it would put `team` (itself or an ancestor) above its CPU cap.
    #[serde(rename = "over_cpu_max")]
    OverCpuMax {
        team: String,
        used_milli: u64,
        ask_milli: u64,
        max_milli: u64,
    },
    /// Running jobs are being preempted for it: borrowed jobs of other teams, to give its
    /// team's guarantee back, or (`lower_priority`) its own team's jobs of lower priority.
    #[serde(rename = "waiting_for_reclaim")]
    WaitingForReclaim {
        victims: Vec<u64>,
        ready_by_s: u64,
        /// The victims are jobs of its own team with a lower priority (absent when false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lower_priority: bool,
    },
    /// The GPUs it needs are promised at `start_s`.
    #[serde(rename = "reserved")]
    Reserved { start_s: u64 },
    /// It would fit now, but would delay a reserved job.
    #[serde(rename = "behind_reservation")]
    BehindReservation { reserved: u64, start_s: u64 },
    /// Not enough free GPUs in the right shape.
    #[serde(rename = "no_placement")]
    NoPlacement {
        tasks: u32,
        gpu: GpuAsk,
        model: Option<String>,
        free_gpus: u64,
        largest_free_block: u32,
    },
    /// `fifo`: the job at the head of the queue is blocked.
    #[serde(rename = "blocked_by_head")]
    BlockedByHead { head: u64 },
    /// `static`: the team has no partition for this GPU model.
    #[serde(rename = "no_partition")]
    NoPartition { team: String },
    /// It cannot be preempted, so it runs only inside its team's guarantee (or on nodes no
    /// team is guaranteed), and none of that has room.
    #[serde(rename = "not_preemptible")]
    NotPreemptible { team: String },
    /// It cannot be preempted and has no time limit, so it never borrows: it runs only within
    /// its team's guarantee, which is in use.
    #[serde(rename = "needs_time_limit")]
    NeedsTimeLimit { team: String },
}

/// What a dependency waits for where it does not say (and what an older server's answers
/// meant): success.
impl Default for After {
    fn default() -> After {
        After::Ok
    }
}

impl Reason {
    pub fn kind(&self) -> ReasonKind {
        match self {
            Reason::Dependency { .. } => ReasonKind::Dependency,
            Reason::DependencyFailed { .. } => ReasonKind::DependencyFailed,
            Reason::ArrayLimit { .. } => ReasonKind::ArrayLimit,
            Reason::OverMax { .. } => ReasonKind::OverMax,
            Reason::OverCpuMax { .. } => ReasonKind::OverCpuMax,
            Reason::WaitingForReclaim { .. } => ReasonKind::WaitingForReclaim,
            Reason::Reserved { .. } => ReasonKind::Reserved,
            Reason::BehindReservation { .. } => ReasonKind::BehindReservation,
            Reason::NoPlacement { .. } => ReasonKind::NoPlacement,
            Reason::BlockedByHead { .. } => ReasonKind::BlockedByHead,
            Reason::NoPartition { .. } => ReasonKind::NoPartition,
            Reason::NotPreemptible { .. } => ReasonKind::NotPreemptible,
            Reason::NeedsTimeLimit { .. } => ReasonKind::NeedsTimeLimit,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;

    /// Each variant serializes to the literal, parses back from it, and `FromStr` agrees.
    fn pinned<T>(all: &[T], names: &[&str])
    where
        T: Serialize + DeserializeOwned + FromStr + PartialEq + fmt::Debug + Copy + fmt::Display,
        <T as FromStr>::Err: fmt::Debug,
    {
        assert_eq!(all.len(), names.len(), "a variant without a pinned name");
        for (v, name) in all.iter().zip(names) {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(name));
            assert_eq!(
                serde_json::from_value::<T>(serde_json::json!(name)).unwrap(),
                *v
            );
            assert_eq!(name.parse::<T>().unwrap(), *v);
            assert_eq!(v.to_string(), *name);
            // Table columns pad it.
            assert_eq!(format!("{v:<12}|"), format!("{name:<12}|"));
        }
    }

    #[test]
    fn wire_names_are_pinned() {
        pinned(
            JobState::ALL,
            &[
                "pending",
                "running",
                "stopping",
                "succeeded",
                "failed",
                "cancelled",
            ],
        );
        pinned(NodeState::ALL, &["ready", "draining", "down"]);
        pinned(Admission::ALL, &["guaranteed", "borrowed"]);
        pinned(Role::ALL, &["admin", "member", "join"]);
        pinned(
            IdlePolicy::ALL,
            &["warn", "yield", "release", "reclaim", "requeue"],
        );
        pinned(PreemptionCause::ALL, &["reclaim", "priority", "idle"]);
        pinned(
            JobEventKind::ALL,
            &[
                "queued",
                "started",
                "stopping",
                "requeued",
                "succeeded",
                "exited",
                "failed",
                "lost",
                "idle",
                "cancelled",
            ],
        );
        pinned(
            ReasonKind::ALL,
            &[
                "dependency",
                "dependency_failed",
                "array_limit",
                "over_max",
                "over_cpu_max",
                "waiting_for_reclaim",
                "reserved",
                "behind_reservation",
                "no_placement",
                "blocked_by_head",
                "no_partition",
                "not_preemptible",
                "needs_time_limit",
            ],
        );
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let e = "boss".parse::<Role>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown role \"boss\"; valid: admin, member, join"
        );
        let e = "sleeping".parse::<JobState>().unwrap_err();
        assert!(e
            .to_string()
            .contains("pending, running, stopping, succeeded, failed, cancelled"));
    }

    #[test]
    fn reasons_are_pinned_with_their_kind() {
        let cases = [
            (
                Reason::Dependency {
                    on: 1,
                    when: After::Ok,
                },
                serde_json::json!({"kind": "dependency", "on": 1, "when": "ok"}),
            ),
            (
                Reason::DependencyFailed {
                    on: 2,
                    when: After::Failed,
                },
                serde_json::json!({"kind": "dependency_failed", "on": 2, "when": "failed"}),
            ),
            (
                Reason::ArrayLimit {
                    array: 5,
                    max_running: 8,
                },
                serde_json::json!({"kind": "array_limit", "array": 5, "max_running": 8}),
            ),
            (
                Reason::OverMax {
                    team: "a".into(),
                    model: "*".into(),
                    used_milli: 1000,
                    ask_milli: 2000,
                    max_milli: 2000,
                },
                serde_json::json!({"kind": "over_max", "team": "a", "model": "*",
                    "used_milli": 1000, "ask_milli": 2000, "max_milli": 2000}),
            ),
            (
                Reason::OverCpuMax {
                    team: "a".into(),
                    used_milli: 3000,
                    ask_milli: 2000,
                    max_milli: 4000,
                },
                serde_json::json!({"kind": "over_cpu_max", "team": "a",
                    "used_milli": 3000, "ask_milli": 2000, "max_milli": 4000}),
            ),
            (
                Reason::WaitingForReclaim {
                    victims: vec![3, 4],
                    ready_by_s: 10,
                    lower_priority: false,
                },
                serde_json::json!({"kind": "waiting_for_reclaim", "victims": [3, 4], "ready_by_s": 10}),
            ),
            (
                Reason::WaitingForReclaim {
                    victims: vec![3],
                    ready_by_s: 10,
                    lower_priority: true,
                },
                serde_json::json!({"kind": "waiting_for_reclaim", "victims": [3], "ready_by_s": 10,
                    "lower_priority": true}),
            ),
            (
                Reason::Reserved { start_s: 5 },
                serde_json::json!({"kind": "reserved", "start_s": 5}),
            ),
            (
                Reason::BehindReservation {
                    reserved: 7,
                    start_s: 9,
                },
                serde_json::json!({"kind": "behind_reservation", "reserved": 7, "start_s": 9}),
            ),
            (
                Reason::NoPlacement {
                    tasks: 2,
                    gpu: GpuAsk::Whole(8),
                    model: None,
                    free_gpus: 3,
                    largest_free_block: 2,
                },
                serde_json::json!({"kind": "no_placement", "tasks": 2, "gpu": {"whole": 8},
                    "model": null, "free_gpus": 3, "largest_free_block": 2}),
            ),
            (
                Reason::BlockedByHead { head: 1 },
                serde_json::json!({"kind": "blocked_by_head", "head": 1}),
            ),
            (
                Reason::NoPartition { team: "b".into() },
                serde_json::json!({"kind": "no_partition", "team": "b"}),
            ),
            (
                Reason::NotPreemptible { team: "b".into() },
                serde_json::json!({"kind": "not_preemptible", "team": "b"}),
            ),
            (
                Reason::NeedsTimeLimit { team: "b".into() },
                serde_json::json!({"kind": "needs_time_limit", "team": "b"}),
            ),
        ];
        // Every kind, and both kinds of reclaim.
        assert_eq!(cases.len(), ReasonKind::ALL.len() + 1);
        for (reason, json) in cases {
            assert_eq!(serde_json::to_value(&reason).unwrap(), json);
            assert_eq!(json["kind"], reason.kind().as_str());
            assert_eq!(serde_json::from_value::<Reason>(json).unwrap(), reason);
        }
        assert_eq!(
            serde_json::to_value(GpuAsk::Milli(250)).unwrap(),
            serde_json::json!({"milli": 250})
        );
    }
}
