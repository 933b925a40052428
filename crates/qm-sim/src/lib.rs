//! Quartermaster's simulator: the `qm-core` planner on a virtual clock, fed by cluster
//! traces. What it measures is what the production scheduler would do: the server and the
//! simulator drive the same `plan`.

pub mod cluster;
pub mod gen;
pub mod idle;
pub mod pack;
pub mod report;
pub mod rng;
pub mod sim;
pub mod svg;
pub mod teamspec;
pub mod trace;
