//! Why an event was refused. Each message says what was wrong and what would be right.

use std::fmt;

use crate::model::{JobId, NodeId};

/// A refused event. The state is unchanged when `apply` returns one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    UnknownJob(JobId),
    UnknownNode(NodeId),
    UnknownTeam {
        team: String,
        known: Vec<String>,
    },
    DuplicateJob(JobId),
    /// The job could never run, whatever happens to the cluster's load.
    Unrunnable {
        job: JobId,
        why: String,
    },
    /// The job's own fields are inconsistent.
    InvalidJob {
        job: JobId,
        why: String,
    },
    InvalidTeam {
        team: String,
        why: String,
    },
    InvalidNode {
        node: String,
        why: String,
    },
    WrongState {
        job: JobId,
        state: &'static str,
        expected: &'static str,
    },
    /// A start that does not match the job or the free capacity.
    BadPlacement {
        job: JobId,
        why: String,
    },
    NotPreemptible(JobId),
    BadBeneficiary {
        victim: JobId,
        beneficiary: JobId,
    },
    /// A stop for priority whose beneficiary is not a job of the victim's own team with a
    /// higher priority.
    NotOutranked {
        victim: JobId,
        beneficiary: Option<JobId>,
    },
    /// A report about a run that is no longer the job's current run.
    StaleRun {
        job: JobId,
        attempt: u32,
        current: Option<u32>,
    },
    Invalid(String),
}

impl ApplyError {
    pub(crate) fn invalid_node(node: &str, why: &str) -> ApplyError {
        ApplyError::InvalidNode {
            node: node.to_string(),
            why: why.to_string(),
        }
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::UnknownJob(id) => write!(f, "{id} does not exist"),
            ApplyError::UnknownNode(id) => {
                write!(f, "{id} does not exist; a node must register first")
            }
            ApplyError::UnknownTeam { team, known } => {
                write!(f, "unknown team {team:?}")?;
                if known.is_empty() {
                    write!(f, "; no teams exist yet, create one first")
                } else {
                    write!(f, "; known teams: {}", known.join(", "))
                }
            }
            ApplyError::DuplicateJob(id) => write!(f, "{id} was already submitted"),
            ApplyError::Unrunnable { job, why } => write!(f, "{job} can never run: {why}"),
            ApplyError::InvalidJob { job, why } => write!(f, "{job} is invalid: {why}"),
            ApplyError::InvalidTeam { team, why } => write!(f, "team {team:?} refused: {why}"),
            ApplyError::InvalidNode { node, why } => write!(f, "node {node:?} refused: {why}"),
            ApplyError::WrongState {
                job,
                state,
                expected,
            } => write!(f, "{job} is {state}; this needs it {expected}"),
            ApplyError::BadPlacement { job, why } => write!(f, "start of {job} refused: {why}"),
            ApplyError::NotPreemptible(id) => {
                write!(f, "{id} is not preemptible; it can only be cancelled")
            }
            ApplyError::BadBeneficiary {
                victim,
                beneficiary,
            } => write!(
                f,
                "cannot stop {victim} for {beneficiary}: the beneficiary must be a pending job"
            ),
            ApplyError::NotOutranked {
                victim,
                beneficiary,
            } => match beneficiary {
                Some(b) => write!(
                    f,
                    "cannot stop {victim} for {b} by priority: {b} must belong to {victim}'s team and have a higher priority"
                ),
                None => write!(
                    f,
                    "cannot stop {victim} by priority without a beneficiary: name the higher-priority job of its team it makes room for"
                ),
            },
            ApplyError::StaleRun {
                job,
                attempt,
                current,
            } => match current {
                Some(c) => write!(
                    f,
                    "report about run {attempt} of {job} ignored: its current run is {c}"
                ),
                None => write!(
                    f,
                    "report about run {attempt} of {job} ignored: it is not running"
                ),
            },
            ApplyError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ApplyError {}
