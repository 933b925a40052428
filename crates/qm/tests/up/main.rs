//! `qm up` as users run it: a real server process with its SQLite file, a real agent process
//! with simulated GPUs, real task processes, and the `qm` CLI against them.

mod api;
mod contract;
mod crash;
mod dashboard;
mod harness;
mod jobs;
mod partition;
mod postgres;
mod security;
mod slurm;
mod soak;
mod tls;
