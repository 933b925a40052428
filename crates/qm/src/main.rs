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
    Submit {
        #[command(flatten)]
        args: client::SubmitArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// List jobs.
    Jobs {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        query: client::JobQuery,
        #[arg(long)]
        json: bool,
    },
    /// A job's details: tasks, placement, events (JOB: 12, or 12_7 for an array's job).
    Show {
        #[command(flatten)]
        conn: client::Conn,
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Why a job waits, and when it should start.
    Why {
        #[command(flatten)]
        conn: client::Conn,
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs: by id (12, an array's id, 12_7), or every one a filter matches.
    Cancel {
        #[command(flatten)]
        args: client::CancelArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Ended jobs, for accounting: waits, run times, GPU-hours, exits, preemptions and idle
    /// GPU-hours; from the store, so it reaches back past what the server holds in memory.
    History {
        #[command(flatten)]
        args: client::HistoryArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Each team's use over a window: GPU-hours guaranteed, used, borrowed, lent and idle,
    /// its jobs' waits (p50, p99), preemptions suffered and caused.
    Report {
        #[command(flatten)]
        args: client::ReportArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// A task's output.
    Logs {
        #[command(flatten)]
        conn: client::Conn,
        job: String,
        #[arg(long, default_value_t = 0)]
        task: u32,
        /// Keep printing until the task ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Nodes, or drain, resume or reset one.
    Nodes {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        what: Option<client::NodesCmd>,
        #[arg(long)]
        json: bool,
    },
    /// The team tree with guaranteed, max, used, borrowed and idle GPUs.
    Teams {
        #[command(flatten)]
        conn: client::Conn,
        #[arg(long)]
        json: bool,
    },
    /// The servers: the store, which one leads (since when, its term) and the standbys.
    Cluster {
        #[command(flatten)]
        conn: client::Conn,
        #[arg(long)]
        json: bool,
    },
    /// Teams and tokens (admin token).
    Admin {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        what: client::AdminCmd,
    },
    /// Shell completions: `qm completions bash > /etc/bash_completion.d/qm` (or zsh, fish,
    /// elvish, powershell).
    Completions { shell: clap_complete::Shell },
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
    let result = match cli.command {
        Command::Up(a) => up::up(a),
        Command::Server(a) => up::server(a),
        Command::Agent(a) => up::agent(a),
        Command::Submit { args, conn } => client::submit(&conn, args),
        Command::Jobs { conn, query, json } => client::jobs(&conn, &query, json),
        Command::Show { conn, job, json } => client::show(&conn, &job, json),
        Command::Why { conn, job, json } => client::why(&conn, &job, json),
        Command::Cancel { args, conn } => client::cancel(&conn, args),
        Command::History { args, conn } => client::history(&conn, args),
        Command::Report { args, conn } => client::report(&conn, args),
        Command::Logs {
            conn,
            job,
            task,
            follow,
        } => client::logs(&conn, &job, task, follow),
        Command::Nodes { conn, what, json } => client::nodes(&conn, what, json),
        Command::Teams { conn, json } => client::teams(&conn, json),
        Command::Cluster { conn, json } => client::cluster(&conn, json),
        Command::Admin { conn, what } => client::admin(&conn, what),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "qm",
                &mut out,
            );
            // A closed pipe (`| head`) is the reader's choice, not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), &out) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
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
