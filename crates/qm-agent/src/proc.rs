//! Task processes: each in its own process group, output to a log file, SIGTERM then SIGKILL,
//! CPU use from `/proc` for simulated GPUs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use qm_proto::Launch;

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Who a process is, beyond its id (which the kernel reuses): the boot it runs in and its
/// start time, in clock ticks since that boot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub boot: String,
    pub start: u64,
}

/// The identity of live process `pid`, from `/proc`.
pub fn proc_id(pid: i32) -> Option<ProcId> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: the name may hold spaces and parentheses; the fields
    // after the last `)` start at the third, and the start time is the 22nd.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ProcId {
        pid,
        boot: boot.trim().to_string(),
        start,
    })
}

pub struct Task {
    child: Option<Child>,
    pgid: i32,
    /// The group leader's identity when it started, for a later life of the agent.
    ident: Option<ProcId>,
    log: PathBuf,
    uploaded: u64,
    code: Option<i32>,
    kill_at: Option<Instant>,
    pub gpus: Vec<u32>,
    cpu: Option<(Instant, u64)>,
    /// Why it never started.
    why: Option<String>,
    /// Its batch script's file, removed once it has exited.
    script: Option<PathBuf>,
}

/// Writes a batch script to a new private file in `dir` (the agent's `scripts` folder,
/// which others may pass through but not list), mode 0700, created exclusively so that no
/// file or link planted there is followed, owned by the user the task runs as.
fn write_script(
    dir: &Path,
    l: &Launch,
    text: &str,
    run_as: Option<&User>,
) -> Result<PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(
        "job-{}-task-{}-attempt-{}-{nanos}",
        l.key.job, l.key.task, l.key.attempt,
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .map_err(|e| format!("cannot write the job's script to {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the job's script to {}: {e}", path.display()))?;
    if let Some(u) = run_as {
        std::os::unix::fs::chown(&path, Some(u.uid), Some(u.gid))
            .map_err(|e| format!("cannot give {} to uid {}: {e}", path.display(), u.uid))?;
    }
    Ok(path)
}

/// The program that runs a script and its first arguments: the interpreter of its `#!` line
/// (with that line's one argument, as the kernel reads it), else `/bin/sh`. Running the
/// interpreter on the file, rather than the file itself, works where temporary files may
/// not be executed.
pub fn script_runner(text: &str) -> Vec<String> {
    let Some(line) = text.strip_prefix("#!").and_then(|t| t.lines().next()) else {
        return vec!["/bin/sh".into()];
    };
    let line = line.trim();
    match line.split_once([' ', '\t']) {
        None if line.is_empty() => vec!["/bin/sh".into()],
        None => vec![line.to_string()],
        Some((prog, arg)) => vec![prog.to_string(), arg.trim().to_string()],
    }
}

/// A Unix user, from /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

pub fn user(name: &str) -> Option<User> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(User {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        })
    })
}

/// What a task inherits from the agent's environment: the search path, locale, time zone and
/// temporary directory (and `LC_*`). Nothing else of the agent's reaches a task: not its join
/// token, not its credentials.
const INHERITED: &[&str] = &["PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// The environment a task starts with, before the job's own variables and the scheduler's
/// (`CUDA_VISIBLE_DEVICES`, the torchrun variables, `QM_*`), which the launch carries: the
/// [`INHERITED`] variables, then `HOME`, `USER`, `LOGNAME` and `SHELL` of the user it runs as
/// (the agent's own when it runs as the agent's user).
fn base_env(
    agent: impl Iterator<Item = (String, String)>,
    run_as: Option<(&str, &User)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut own: Vec<(String, String)> = Vec::new();
    for (k, v) in agent {
        if INHERITED.contains(&k.as_str()) || k.starts_with("LC_") {
            env.push((k, v));
        } else if ["HOME", "USER", "LOGNAME", "SHELL"].contains(&k.as_str()) {
            own.push((k, v));
        }
    }
    match run_as {
        Some((name, u)) => {
            env.push(("HOME".into(), u.home.clone()));
            env.push(("USER".into(), name.to_string()));
            env.push(("LOGNAME".into(), name.to_string()));
            env.push(("SHELL".into(), u.shell.clone()));
        }
        None => env.extend(own),
    }
    env
}

/// Who a task runs as.
#[derive(Debug, PartialEq, Eq)]
pub enum Identity {
    /// The agent's own user: an agent that is not root cannot become anyone else.
    Agent,
    /// An existing user other than root, named by the job.
    User(String, User),
    /// Root, where the admin allowed it (`--allow-root-tasks`).
    Root,
}

/// Whom a task may run as. An agent that is not root runs every task as itself. A root
/// agent runs a task only as the existing, non-root user its job names; a job that names
/// none, a user the node does not have, or one whose uid is 0 fails closed, unless the admin
/// started the agent with `--allow-root-tasks`, when such a task runs as root.
pub fn identity(
    agent_is_root: bool,
    name: Option<&str>,
    lookup: impl Fn(&str) -> Option<User>,
    allow_root: bool,
    node: &str,
) -> Result<Identity, String> {
    if !agent_is_root {
        return Ok(Identity::Agent);
    }
    let refuse = |why: String| {
        if allow_root {
            Ok(Identity::Root)
        } else {
            Err(format!(
                "{why}; node {node} runs tasks as root only when its agent was started with --allow-root-tasks"
            ))
        }
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return refuse("the job names no user to run as".into());
    };
    match lookup(name) {
        Some(u) if u.uid != 0 => Ok(Identity::User(name.to_string(), u)),
        Some(_) => refuse(format!("user `{name}` is root (uid 0)")),
        None => refuse(format!("user `{name}` does not exist on node {node}")),
    }
}

/// The first argument that makes `qm` a fenced task's guard instead of its CLI:
/// `qm __qm_fence_guard AGENT_PID PROGRAM ARGS...`.
pub const FENCE_GUARD: &str = "__qm_fence_guard";

/// A fenced task's group leader, between the agent and the task's program: the agent starts
/// it with a parent-death signal (SIGUSR2), on which it SIGKILLs its whole process group, so
/// a fenced task dies with its agent instead of running on unsupervised, out of the fence's
/// reach. SIGTERM and SIGINT (the agent's stop, to the whole group) are the program's to
/// handle; the guard waits for the program and exits as it did.
pub fn fence_guard(args: &[std::ffi::OsString]) -> ! {
    extern "C" fn kill_group(_: libc::c_int) {
        // SAFETY: kill is async-signal-safe; 0 is this process's own group.
        unsafe { libc::kill(0, libc::SIGKILL) };
    }
    extern "C" fn leave_to_the_program(_: libc::c_int) {}
    // SAFETY: installing handlers that only make async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGUSR2, kill_group as *const () as libc::sighandler_t);
        libc::signal(
            libc::SIGTERM,
            leave_to_the_program as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            leave_to_the_program as *const () as libc::sighandler_t,
        );
    }
    let (Some(parent), Some(prog)) = (args.first(), args.get(1)) else {
        eprintln!("qm: {FENCE_GUARD} AGENT_PID PROGRAM ARGS...");
        std::process::exit(127);
    };
    // The agent may have died before the parent-death signal was set.
    let parent: i32 = parent.to_string_lossy().parse().unwrap_or(-1);
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        kill_group(0);
    }
    // The program gets default handlers (exec resets caught signals) and an empty mask.
    match std::process::Command::new(prog).args(&args[2..]).status() {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            std::process::exit(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
            )
        }
        Err(e) => {
            eprintln!("qm agent: cannot run {}: {e}", prog.to_string_lossy());
            std::process::exit(127);
        }
    }
}

impl Task {
    pub fn spawn(
        l: &Launch,
        log: &Path,
        scripts: &Path,
        gpus: Vec<u32>,
        who: &Identity,
    ) -> Result<Task, String> {
        let (name, run_as) = match who {
            Identity::User(name, u) => (name.as_str(), Some(u.clone())),
            Identity::Agent | Identity::Root => ("", None),
        };
        // The log is its owner's alone: mode 0600, owned by the user the task runs as.
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?
        };
        if let Some(u) = &run_as {
            std::os::unix::fs::chown(log, Some(u.uid), Some(u.gid))
                .map_err(|e| format!("cannot give {} to {name}: {e}", log.display()))?;
        }
        let err = out.try_clone().map_err(|e| e.to_string())?;
        // A batch script runs as `interpreter [arg] FILE ARGS...` (`command[0]` only names
        // the script as submitted).
        let script = match &l.script {
            Some(text) => Some(write_script(scripts, l, text, run_as.as_ref())?),
            None => None,
        };
        let scripted: Vec<String>;
        let command: &[String] = match (&script, &l.script) {
            (Some(path), Some(text)) => {
                let mut c = script_runner(text);
                c.push(path.display().to_string());
                c.extend(l.command.iter().skip(1).cloned());
                scripted = c;
                &scripted
            }
            _ => &l.command,
        };
        let (prog, args) = command.split_first().ok_or("an empty command")?;
        let base = base_env(std::env::vars(), run_as.as_ref().map(|u| (name, u)));
        // A fenced task runs under its guard (this very binary), which dies with the agent
        // and takes the task with it.
        let fenced = l.fence_after_ms.is_some();
        let mut cmd = if fenced {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the agent's own binary for the fence: {e}"))?;
            let mut c = std::process::Command::new(exe);
            c.arg(FENCE_GUARD)
                .arg(std::process::id().to_string())
                .arg(prog);
            c
        } else {
            std::process::Command::new(prog)
        };
        cmd.args(args)
            .env_clear()
            .envs(base)
            .envs(&l.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(dir) = &l.workdir {
            cmd.current_dir(dir);
        }
        // SAFETY: only async-signal-safe calls between fork and exec: the task gets the
        // default SIGHUP the agent itself ignores; a fenced task's guard gets SIGUSR2 when
        // the agent dies (set here, after the user changed, which would clear it).
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                if fenced {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2);
                }
                Ok(())
            });
        }
        if let Some(u) = &run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = cmd.spawn().map_err(|e| {
            if let Some(path) = &script {
                let _ = std::fs::remove_file(path);
            }
            format!("cannot run {prog:?}: {e}")
        })?;
        let pgid = child.id() as i32;
        Ok(Task {
            child: Some(child),
            pgid,
            ident: proc_id(pgid),
            log: log.to_path_buf(),
            uploaded: 0,
            code: None,
            kill_at: None,
            gpus,
            cpu: None,
            why: None,
            script,
        })
    }

    /// A task that could not start: it has exited with 127, for this reason.
    pub fn failed(log: PathBuf, why: String) -> Task {
        Task {
            child: None,
            pgid: 0,
            ident: None,
            log,
            uploaded: 0,
            code: Some(127),
            why: Some(why),
            kill_at: None,
            gpus: Vec::new(),
            cpu: None,
            script: None,
        }
    }

    /// Why the task never started, if it did not.
    pub fn why(&self) -> Option<String> {
        self.why.clone()
    }

    /// The task's process group (0 for a task that never started).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// The identity of the task's group leader, as it started.
    pub fn ident(&self) -> Option<ProcId> {
        self.ident.clone()
    }

    /// The exit code once the task has exited (128 + signal if killed).
    pub fn poll(&mut self) -> Option<i32> {
        if self.code.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    use std::os::unix::process::ExitStatusExt;
                    self.code = Some(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
                    );
                    // Whatever the group left behind goes too.
                    // SAFETY: signalling a process group we created.
                    unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
                    if let Some(path) = self.script.take() {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        self.code
    }

    /// SIGTERM to the whole group now, SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if self.code.is_some() || self.pgid == 0 {
            return;
        }
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-self.pgid, libc::SIGTERM) };
        let at = Instant::now() + grace;
        self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
    }

    pub fn escalate(&mut self) {
        if let Some(at) = self.kill_at {
            if self.code.is_none() && Instant::now() >= at {
                // SAFETY: signalling a process group we created.
                unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            }
        }
    }

    /// Output not yet uploaded: (offset, text), at most 256 KiB.
    pub fn unsent(&mut self) -> Option<(u64, Vec<u8>)> {
        let mut f = File::open(&self.log).ok()?;
        let len = f.metadata().ok()?.len();
        if len <= self.uploaded {
            return None;
        }
        f.seek(SeekFrom::Start(self.uploaded)).ok()?;
        let mut buf = vec![0u8; ((len - self.uploaded) as usize).min(256 << 10)];
        f.read_exact(&mut buf).ok()?;
        Some((self.uploaded, buf))
    }

    pub fn sent(&mut self, upto: u64) {
        self.uploaded = upto;
    }

    pub fn fully_uploaded(&self) -> bool {
        std::fs::metadata(&self.log).map_or(true, |m| m.len() <= self.uploaded)
    }

    /// CPU use of the task's process group since the previous call, percent of one core.
    pub fn cpu_pct(&mut self, clk: u64) -> Option<u8> {
        if self.pgid == 0 {
            return None;
        }
        let ticks = group_ticks(self.pgid);
        let now = Instant::now();
        let pct = self.cpu.map(|(t0, k0)| {
            let dt = now.duration_since(t0).as_secs_f64().max(1e-3);
            let used = ticks.saturating_sub(k0) as f64 / clk as f64;
            (used / dt * 100.0).clamp(0.0, 100.0) as u8
        });
        self.cpu = Some((now, ticks));
        pct
    }
}

/// utime + stime of every process in group `pgid`, in clock ticks.
fn group_ticks(pgid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) in parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        if f.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgid) {
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn a_process_is_known_by_its_boot_and_start_time_not_its_id_alone() {
        let me = proc_id(std::process::id() as i32).expect("this process in /proc");
        assert_eq!(
            proc_id(me.pid).as_ref(),
            Some(&me),
            "the same process, asked again"
        );
        // The same id with another start time (a reused id) or from another boot is not it.
        let reused = ProcId {
            start: me.start + 1,
            ..me.clone()
        };
        assert_ne!(proc_id(me.pid).as_ref(), Some(&reused));
        let rebooted = ProcId {
            boot: "another-boot".into(),
            ..me.clone()
        };
        assert_ne!(proc_id(me.pid).as_ref(), Some(&rebooted));
        // A child started later has a later or equal start time and its own id.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let c = proc_id(child.id() as i32).unwrap();
        assert!(c.start >= me.start && c.pid != me.pid && c.boot == me.boot);
        let _ = child.kill();
        let _ = child.wait();
        // Once gone, it is nobody.
        assert_eq!(proc_id(c.pid), None);
    }

    #[test]
    fn a_root_agent_runs_tasks_only_as_existing_users_other_than_root() {
        let lookup = |name: &str| match name {
            "alice" => Some(User {
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into(),
                shell: "/bin/sh".into(),
            }),
            "root" | "toor" => Some(User {
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
            }),
            _ => None,
        };
        let alice = Identity::User("alice".into(), lookup("alice").unwrap());
        assert_eq!(
            identity(true, Some("alice"), lookup, false, "n7"),
            Ok(alice)
        );
        for (name, why) in [
            (Some("mallory"), "user `mallory` does not exist on node n7"),
            (Some("toor"), "user `toor` is root (uid 0)"),
            (Some("root"), "user `root` is root (uid 0)"),
            (None, "the job names no user to run as"),
            (Some(""), "the job names no user to run as"),
        ] {
            let err = identity(true, name, lookup, false, "n7").unwrap_err();
            assert!(err.starts_with(why), "{name:?}: {err}");
            assert!(err.contains("--allow-root-tasks"), "{err}");
            // Allowed by the admin: root.
            assert_eq!(identity(true, name, lookup, true, "n7"), Ok(Identity::Root));
        }
        // An agent that is not root runs everything as itself, whoever is named.
        for name in [Some("alice"), Some("root"), Some("mallory"), None] {
            assert_eq!(
                identity(false, name, lookup, false, "n7"),
                Ok(Identity::Agent)
            );
        }
    }

    #[test]
    fn a_task_inherits_only_the_allowlist_and_its_users_identity() {
        let agent = [
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("HOME", "/root"),
            ("USER", "root"),
            ("QM_JOIN_TOKEN", "qmj_secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("LD_PRELOAD", "/tmp/evil.so"),
        ];
        let alice = User {
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        };
        let env: std::collections::BTreeMap<String, String> =
            base_env(vars(&agent), Some(("alice", &alice)))
                .into_iter()
                .collect();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["HOME", "LANG", "LC_TIME", "LOGNAME", "PATH", "SHELL", "USER"]
        );
        assert_eq!(env["HOME"], "/home/alice");
        assert_eq!(env["USER"], "alice");
        assert_eq!(env["LOGNAME"], "alice");
        // Running as the agent's own user: the agent's identity.
        let env: std::collections::BTreeMap<String, String> =
            base_env(vars(&agent), None).into_iter().collect();
        assert_eq!(env["HOME"], "/root");
        assert!(!env.contains_key("QM_JOIN_TOKEN"));
        assert!(!env.contains_key("LD_PRELOAD"));
    }
}
