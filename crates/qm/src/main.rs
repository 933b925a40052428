//! `qm`: Quartermaster's one binary. `main` parses the command line, runs the subcommand and
//! turns its error chain into a message and an exit code.

mod alloc;
mod bench;
mod client;
mod e2e;
mod fleet;
mod script;
mod sim;
mod tls;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Quartermaster: a scheduler for shared GPU clusters.
#[derive(Parser, Debug)]
#[command(name = "qm", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    conn: client::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Everything on this machine: the server with its SQLite store and a local agent.
    Up(up::UpArgs),
    /// The control plane alone, for a real cluster.
    Server(up::ServerArgs),
    /// A node agent, for a real cluster.
    Agent(up::AgentArgs),
    /// Submit a job: `qm submit --gpus 2 --tasks 2 -- python train.py`.
    Submit(client::SubmitArgs),
    /// List jobs.
    Jobs {
        #[command(flatten)]
        query: client::JobQuery,
        #[arg(long)]
        json: bool,
    },
    /// A job's details: tasks, placement, events (JOB: 12, or 12_7 for an array's job).
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Why a job waits, and when it should start.
    Why {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs: by id (12, an array's id, 12_7), or every one a filter matches.
    Cancel(client::CancelArgs),
    /// Ended jobs, for accounting: waits, run times, GPU-hours, exits, preemptions and idle
    /// GPU-hours; from the store, so it reaches back past what the server holds in memory.
    History(client::HistoryArgs),
    /// A task's output.
    Logs {
        job: String,
        #[arg(long, default_value_t = 0)]
        task: u32,
        /// Keep printing until the task ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Nodes, or drain, resume or reset one.
    Nodes {
        #[command(subcommand)]
        what: Option<client::NodesCmd>,
        #[arg(long)]
        json: bool,
    },
    /// The team tree with guaranteed, max, used, borrowed and idle GPUs.
    Teams {
        #[arg(long)]
        json: bool,
    },
    /// The servers: the store, which one leads (since when, its term) and the standbys.
    Cluster {
        #[arg(long)]
        json: bool,
    },
    /// Teams and tokens (admin token).
    Admin {
        #[command(subcommand)]
        what: client::AdminCmd,
    },
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
    // A fenced task's guard, started by `qm agent` (not a command for people).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == qm_agent::FENCE_GUARD) {
        qm_agent::fence_guard(&args[2..]);
    }
    let cli = Cli::parse();
    let conn = cli.conn;
    let result = match cli.command {
        Command::Up(a) => up::up(a),
        Command::Server(a) => up::server(a),
        Command::Agent(a) => up::agent(a),
        Command::Submit(a) => client::submit(&conn, a),
        Command::Jobs { query, json } => client::jobs(&conn, &query, json),
        Command::Show { job, json } => client::show(&conn, &job, json),
        Command::Why { job, json } => client::why(&conn, &job, json),
        Command::Cancel(a) => client::cancel(&conn, a),
        Command::History(a) => client::history(&conn, a),
        Command::Logs { job, task, follow } => client::logs(&conn, &job, task, follow),
        Command::Nodes { what, json } => client::nodes(&conn, what, json),
        Command::Teams { json } => client::teams(&conn, json),
        Command::Cluster { json } => client::cluster(&conn, json),
        Command::Admin { what } => client::admin(&conn, what),
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
            let code = err.downcast_ref::<client::CliError>().map_or(1, |e| e.code);
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
