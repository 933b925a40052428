//! `qm`: Quartermaster's one binary. `main` parses the command line, runs the subcommand and
//! turns its error chain into a message and an exit code.

mod alloc;
mod bench;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Quartermaster: a scheduler for shared GPU clusters.
#[derive(Parser, Debug)]
#[command(name = "qm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure Quartermaster's speed.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Replay cluster traces through the scheduling core and compare policies.
    Sim {
        #[command(subcommand)]
        what: sim::SimCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench { what } => bench::run(what),
        Command::Sim { what } => sim::run(what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("qm: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
