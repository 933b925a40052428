//! Limits on what a request may carry, each refused with a message that names the limit: a
//! shared server must not let one request (or one user's thousands) take its memory, its
//! store or the agents' command lines.

use std::collections::BTreeMap;

use qm_proto::SubmitRequest;

/// Arguments of a command, program included.
pub const MAX_ARGS: usize = 4096;
/// Bytes of a command, all arguments together.
pub const MAX_COMMAND_BYTES: usize = 256 << 10;
/// Variables of a job's environment.
pub const MAX_ENV: usize = 1024;
/// Bytes of a job's environment, names and values together.
pub const MAX_ENV_BYTES: usize = 256 << 10;
/// Bytes of a variable's name.
pub const MAX_ENV_NAME: usize = 256;
/// Bytes of a job's name.
pub const MAX_JOB_NAME: usize = 256;
/// Bytes of a working directory.
pub const MAX_PATH: usize = 4096;
/// Jobs of one array.
pub const MAX_ARRAY: usize = 10_000;
/// The highest index of an array's job.
pub const MAX_ARRAY_INDEX: u32 = 1_000_000;
/// Jobs one job may depend on.
pub const MAX_DEPENDENCIES: usize = 64;
/// Bytes of command, environment and script of all the jobs of one array together.
pub const MAX_ARRAY_BYTES: usize = 64 << 20;
/// Bytes of a batch script.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;

/// An array's indices, checked: 1 to [`MAX_ARRAY`] of them, distinct, each at most
/// [`MAX_ARRAY_INDEX`], with a running limit of at least 1. Returned in ascending order.
pub fn array(a: &qm_proto::ArrayRequest) -> Result<Vec<u32>, String> {
    if a.indices.is_empty() || a.indices.len() > MAX_ARRAY {
        return Err(format!(
            "array has {} indices; give 1 to {MAX_ARRAY}",
            a.indices.len()
        ));
    }
    let mut sorted = a.indices.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "array index {} is given twice; give each once",
            w[0]
        ));
    }
    if let Some(&big) = sorted.last().filter(|&&i| i > MAX_ARRAY_INDEX) {
        return Err(format!(
            "array index {big} is too high; indices go from 0 to {MAX_ARRAY_INDEX}"
        ));
    }
    if a.max_running == Some(0) {
        return Err("array max_running is 0; give at least 1, or leave it out for no limit".into());
    }
    Ok(sorted)
}

/// Bytes of a team's or a GPU model's name.
pub const MAX_NAME: usize = 64;

/// Variables the scheduler sets for every task: a job may not set them itself.
const RESERVED_ENV: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
];

/// A node's name: what `qm nodes` shows and agents register under.
pub fn node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not allowed; use 1 to 63 letters, digits, '.', '-' or '_' (a host name such as \"gpu-07\")"
        ))
    }
}

/// A credential an agent chose for its node: long and random enough to be a secret.
pub fn credential(c: &str) -> Result<(), String> {
    let ok = (32..=128).contains(&c.len())
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if ok {
        Ok(())
    } else {
        Err("a node's credential must be 32 to 128 letters, digits, '_' or '-' (agents make one from 160 random bits)".into())
    }
}

/// A portable Unix user name: a lower-case letter or `_`, then lower-case letters, digits,
/// `_` or `-`, at most 32.
fn portable_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A member's token name is the Unix user its tasks run as: a portable user name, and never
/// `root`.
pub fn member_name(name: &str) -> Result<(), String> {
    if !portable_user(name) {
        return Err(format!(
            "member name {name:?} is not a Unix user name; its tasks run as that user, so give one such as \"alice\" (a lower-case letter or _, then lower-case letters, digits, _ or -, at most 32)"
        ));
    }
    if name == "root" {
        return Err(
            "a member may not be named \"root\": its tasks would run as root; give the member's own Unix user name".into(),
        );
    }
    Ok(())
}

/// Every field of a submission within its limit.
pub fn submission(req: &SubmitRequest) -> Result<(), String> {
    if req.command.len() > MAX_ARGS {
        return Err(format!(
            "the command has {} arguments; at most {MAX_ARGS} are allowed (put long lists in a file the job reads)",
            req.command.len()
        ));
    }
    let bytes: usize = req.command.iter().map(String::len).sum();
    if bytes > MAX_COMMAND_BYTES {
        return Err(format!(
            "the command is {bytes} bytes; at most {MAX_COMMAND_BYTES} are allowed (put long lists in a file the job reads)"
        ));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(
            "an argument of the command holds a NUL byte, which no program can receive".into(),
        );
    }
    env(&req.env)?;
    text("name", &req.name, MAX_JOB_NAME)?;
    text("team", &req.team, MAX_NAME)?;
    if let Some(m) = &req.gpu_model {
        text("gpu_model", m, MAX_NAME)?;
    }
    if let Some(dir) = &req.workdir {
        text("workdir", dir, MAX_PATH)?;
        if !dir.starts_with('/') {
            return Err(format!(
                "workdir {dir:?} is relative; give an absolute path on the nodes, such as \"/home/alice/run\""
            ));
        }
    }
    if let Some(user) = &req.user {
        if !portable_user(user) {
            return Err(format!(
                "user {user:?} is not a Unix user name (a lower-case letter or _, then lower-case letters, digits, _ or -, at most 32)"
            ));
        }
    }
    if req.after.len() > MAX_DEPENDENCIES {
        return Err(format!(
            "the job depends on {} jobs; at most {MAX_DEPENDENCIES} are allowed",
            req.after.len()
        ));
    }
    if let Some(script) = &req.script {
        if script.len() > MAX_SCRIPT_BYTES {
            return Err(format!(
                "the script is {} bytes; at most {MAX_SCRIPT_BYTES} are allowed",
                script.len()
            ));
        }
        if script.contains('\0') {
            return Err("the script holds a NUL byte; give a text script".into());
        }
    }
    Ok(())
}

fn env(env: &BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > MAX_ENV {
        return Err(format!(
            "the environment has {} variables; at most {MAX_ENV} are allowed",
            env.len()
        ));
    }
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ENV_BYTES {
        return Err(format!(
            "the environment is {bytes} bytes; at most {MAX_ENV_BYTES} are allowed (pass big values in a file)"
        ));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= MAX_ENV_NAME
            && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!(
                "environment variable name {k:?} is not allowed; use letters, digits and _, not starting with a digit, at most {MAX_ENV_NAME} bytes"
            ));
        }
        if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("QM_") {
            return Err(format!(
                "environment variable {k} is set by the scheduler for every task; leave it out"
            ));
        }
        if v.contains('\0') {
            return Err(format!("environment variable {k} holds a NUL byte"));
        }
    }
    Ok(())
}

fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes; at most {max} are allowed",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{field} holds a control character; use printable text"
        ));
    }
    Ok(())
}
