//! Batch scripts: the `#QM` and `#SBATCH` lines of a script given to `qm submit`, turned into
//! `qm submit`'s own flags. `#QM` lines hold those flags as they are written on the command
//! line; the common `#SBATCH` lines are translated (nodes, tasks and GPUs into tasks of so
//! many GPUs each, Slurm's time formats, arrays, dependencies), and each line that has no
//! equivalent is reported once. Directives are read, as Slurm reads them, from the lines at
//! the top of the script: up to the first line that is neither blank, a comment nor the `#!`.

/// What a script asks for, as `qm submit` flags, and what was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `qm submit` flags, in the order the script gives them (`#SBATCH` translations first).
    pub flags: Vec<String>,
    /// One line for each directive that was ignored, saying why.
    pub ignored: Vec<String>,
}

/// A directive that cannot be read, with its line number (from 1).
#[derive(Debug, PartialEq, Eq)]
pub struct DirectiveError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The Slurm request, gathered over every `#SBATCH` line before it is translated: nodes,
/// tasks and GPUs combine.
#[derive(Default)]
struct Slurm {
    nodes: Option<u32>,
    ntasks: Option<u32>,
    per_node: Option<u32>,
    gpus_per_task: Option<u32>,
    gpus_per_node: Option<u32>,
    /// `-G/--gpus`: the whole job's, shared by its nodes once they are known.
    gpus_total: Option<u32>,
    /// `--mem`: per node, shared by its tasks once they are known.
    mem_per_node: Option<String>,
    gpu_model: Option<String>,
    flags: Vec<String>,
}

/// Reads a script's directives.
pub fn directives(text: &str) -> Result<Directives, DirectiveError> {
    let mut out = Directives::default();
    let mut slurm = Slurm::default();
    let mut first_sbatch = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if n == 1 && t.starts_with("#!") {
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if !t.starts_with('#') {
            break;
        }
        let err = |message: String| DirectiveError { line: n, message };
        if let Some(rest) = directive(t, "#QM") {
            let words = shell_words(rest).map_err(err)?;
            out.flags.extend(words);
        } else if let Some(rest) = directive(t, "#SBATCH") {
            first_sbatch.get_or_insert(n);
            let words = shell_words(rest).map_err(err)?;
            let mut it = words.into_iter().peekable();
            while let Some(w) = it.next() {
                let (name, inline) = match w.split_once('=') {
                    Some((k, v)) if k.starts_with('-') => (k.to_string(), Some(v.to_string())),
                    _ => (w.clone(), None),
                };
                let takes_value = !matches!(
                    name.as_str(),
                    "--exclusive" | "--requeue" | "--no-requeue" | "-H" | "--hold" | "--wait"
                );
                let value = if !takes_value {
                    None
                } else if inline.is_some() {
                    inline
                } else if name.starts_with("--") || name.len() == 2 {
                    it.next()
                } else {
                    // `-N4`: a short option with its value attached.
                    Some(name[2..].to_string())
                };
                let short = if name.len() > 2 && !name.starts_with("--") {
                    name[..2].to_string()
                } else {
                    name.clone()
                };
                sbatch(&mut slurm, &mut out.ignored, &short, value, n).map_err(err)?;
            }
        }
    }
    if let Some(n) = first_sbatch {
        let mut flags = translate(slurm).map_err(|message| DirectiveError { line: n, message })?;
        flags.append(&mut out.flags);
        out.flags = flags;
    }
    Ok(out)
}

/// The rest of a line that starts with `tag` followed by a space or its end.
fn directive<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(tag)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// One `#SBATCH` option, recorded or reported.
fn sbatch(
    s: &mut Slurm,
    ignored: &mut Vec<String>,
    name: &str,
    value: Option<String>,
    line: usize,
) -> Result<(), String> {
    let need = |v: Option<String>| v.ok_or_else(|| format!("#SBATCH {name} needs a value"));
    let count = |v: Option<String>| -> Result<u32, String> {
        let v = need(v)?;
        v.parse()
            .map_err(|_| format!("#SBATCH {name}={v}: expected a number"))
    };
    match name {
        "-N" | "--nodes" => {
            let v = need(value)?;
            // `2-4`: Quartermaster starts a gang of a fixed size; take the least.
            let least = v.split('-').next().unwrap_or(&v);
            s.nodes = Some(
                least
                    .parse()
                    .map_err(|_| format!("#SBATCH {name}={v}: expected a number of nodes"))?,
            );
        }
        "-n" | "--ntasks" => s.ntasks = Some(count(value)?),
        "--ntasks-per-node" => s.per_node = Some(count(value)?),
        "--gpus-per-task" => s.gpus_per_task = Some(gpu_count(&need(value)?, s)?),
        "--gpus-per-node" => s.gpus_per_node = Some(gpu_count(&need(value)?, s)?),
        "-G" | "--gpus" => s.gpus_total = Some(gpu_count(&need(value)?, s)?),
        "--gres" => {
            let v = need(value)?;
            for g in v.split(',') {
                let parts: Vec<&str> = g.split(':').collect();
                if parts.first() != Some(&"gpu") {
                    ignored.push(format!(
                        "line {line}: #SBATCH --gres={g}: only gpu resources are scheduled"
                    ));
                    continue;
                }
                match parts.as_slice() {
                    ["gpu"] => s.gpus_per_node = Some(1),
                    ["gpu", n] => s.gpus_per_node = Some(gpu_number(n, &v)?),
                    ["gpu", model, n] => {
                        s.gpu_model = Some((*model).to_string());
                        s.gpus_per_node = Some(gpu_number(n, &v)?);
                    }
                    _ => return Err(format!("#SBATCH --gres={v}: expected gpu[:MODEL]:COUNT")),
                }
            }
        }
        "-t" | "--time" => {
            let v = need(value)?;
            let secs = slurm_time(&v)?;
            s.flags.push(format!("--time-limit={secs}"));
        }
        "-J" | "--job-name" => s.flags.push(format!("--name={}", need(value)?)),
        "-a" | "--array" => s.flags.push(format!("--array={}", need(value)?)),
        "-d" | "--dependency" => {
            for dep in slurm_dependency(&need(value)?)? {
                s.flags.push(format!("--after={dep}"));
            }
        }
        "-p" | "--partition" => s.flags.push(format!("--partition={}", need(value)?)),
        "-A" | "--account" => s.flags.push(format!("--team={}", need(value)?)),
        "--mem" => s.mem_per_node = Some(need(value)?),
        "-H" | "--hold" => {
            return Err(
                "#SBATCH --hold: Quartermaster has no held jobs; submit the script when it should run, or make it wait with --dependency".into(),
            )
        }
        "-c" | "--cpus-per-task" => s.flags.push(format!("--cpu={}", count(value)?)),
        "-D" | "--chdir" => s.flags.push(format!("--workdir={}", need(value)?)),
        "--export" => {
            let v = need(value)?;
            for kv in v.split(',').filter(|kv| kv.contains('=')) {
                s.flags.push(format!("--env={kv}"));
            }
            if v.split(',').any(|kv| !kv.contains('=')) {
                ignored.push(format!(
                    "line {line}: #SBATCH --export={v}: only NAME=VALUE pairs are passed; a task never inherits the submitting shell's environment"
                ));
            }
        }
        "--no-requeue" => s.flags.push("--no-preempt".into()),
        other => {
            let shown = match &value {
                Some(v) => format!("{other}={v}"),
                None => other.to_string(),
            };
            let why = match other {
                "-o" | "--output" | "-e" | "--error" => {
                    "task output is kept by the server: read it with `qm logs JOB`"
                }
                "--mail-type" | "--mail-user" => "Quartermaster sends no mail",
                "--qos" => "use --priority within your team's range",
                "--exclusive" => "ask for whole nodes' GPUs instead",
                _ => "no Quartermaster equivalent",
            };
            ignored.push(format!("line {line}: #SBATCH {shown} ignored: {why}"));
        }
    }
    Ok(())
}

/// `4` or `a100:4` (a typed GPU count, the type taken as the model).
fn gpu_count(v: &str, s: &mut Slurm) -> Result<u32, String> {
    match v.split_once(':') {
        Some((model, n)) => {
            s.gpu_model = Some(model.to_string());
            gpu_number(n, v)
        }
        None => gpu_number(v, v),
    }
}

fn gpu_number(n: &str, whole: &str) -> Result<u32, String> {
    n.parse()
        .map_err(|_| format!("GPU count {whole:?}: expected a number"))
}

/// Turns the gathered Slurm request into `--tasks` and `--gpus` (and the rest).
fn translate(s: Slurm) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let nodes = s.nodes.unwrap_or(1);
    let tasks = match (s.ntasks, s.per_node) {
        (Some(n), _) => n,
        (None, Some(p)) => nodes * p,
        (None, None) => nodes,
    };
    let per_node = s.per_node.unwrap_or_else(|| tasks.div_ceil(nodes.max(1)));
    let gpus_per_node = match (s.gpus_per_node, s.gpus_total) {
        (Some(g), _) => Some(g),
        (None, Some(total)) if total % nodes.max(1) == 0 => Some(total / nodes.max(1)),
        (None, Some(total)) => {
            return Err(format!(
                "--gpus={total} cannot be shared evenly by {nodes} nodes; give --gpus-per-node"
            ))
        }
        (None, None) => None,
    };
    let gpus = match (s.gpus_per_task, gpus_per_node) {
        (Some(g), _) => Some(g),
        (None, Some(g)) if per_node <= 1 => Some(g),
        (None, Some(g)) if g % per_node == 0 => Some(g / per_node),
        (None, Some(g)) => {
            return Err(format!(
                "{g} GPUs per node cannot be shared evenly by {per_node} tasks per node; give --gpus-per-task"
            ))
        }
        (None, None) => None,
    };
    if s.nodes.is_some() || s.ntasks.is_some() || s.per_node.is_some() {
        out.push(format!("--tasks={tasks}"));
    }
    if let Some(g) = gpus {
        out.push(format!("--gpus={g}"));
    }
    if let Some(m) = s.gpu_model {
        out.push(format!("--gpu-model={m}"));
    }
    if let Some(mem) = s.mem_per_node {
        // Slurm's --mem is per node; Quartermaster's per task.
        let mib = crate::client::mem_mib(&mem).map_err(|e| format!("#SBATCH --mem={mem}: {e}"))?;
        out.push(format!("--mem={}", mib / u64::from(per_node.max(1))));
    }
    out.extend(s.flags);
    Ok(out)
}

/// Slurm's time formats as seconds: `MIN`, `MIN:SEC`, `H:MIN:SEC`, `D-H`, `D-H:MIN`,
/// `D-H:MIN:SEC`.
pub fn slurm_time(v: &str) -> Result<u64, String> {
    let bad =
        || format!("time {v:?}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS");
    let num = |t: &str| t.parse::<u64>().map_err(|_| bad());
    let (days, rest) = match v.split_once('-') {
        Some((d, r)) => (num(d)?, Some(r)),
        None => (0, None),
    };
    let secs = match rest {
        Some(r) => {
            let p: Vec<&str> = r.split(':').collect();
            match p.as_slice() {
                [h] => num(h)? * 3600,
                [h, m] => num(h)? * 3600 + num(m)? * 60,
                [h, m, s] => num(h)? * 3600 + num(m)? * 60 + num(s)?,
                _ => return Err(bad()),
            }
        }
        None => {
            let p: Vec<&str> = v.split(':').collect();
            match p.as_slice() {
                [m] => num(m)? * 60,
                [m, s] => num(m)? * 60 + num(s)?,
                [h, m, s] => num(h)? * 3600 + num(m)? * 60 + num(s)?,
                _ => return Err(bad()),
            }
        }
    };
    let total = days * 86_400 + secs;
    if total == 0 {
        return Err(format!("time {v:?} is zero; give a positive limit"));
    }
    Ok(total)
}

/// `afterok:12:13,afterany:14` as `qm submit --after` values (`12:ok`, `13:ok`, `14:any`).
fn slurm_dependency(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    if v.contains('?') {
        return Err(format!(
            "#SBATCH --dependency={v}: '?' (any one of them) is not supported; Quartermaster waits for all (use ',')"
        ));
    }
    for part in v.split(',') {
        let mut it = part.split(':');
        let kind = it.next().unwrap_or_default();
        let when = match kind {
            "afterok" => "ok",
            "afterany" => "any",
            "afternotok" => "failed",
            _ => {
                return Err(format!(
                    "#SBATCH --dependency={v}: {kind:?} is not supported; use afterok, afterany or afternotok"
                ))
            }
        };
        let ids: Vec<&str> = it.collect();
        if ids.is_empty() {
            return Err(format!("#SBATCH --dependency={v}: {kind} needs a job id"));
        }
        for id in ids {
            // `12+30` (a delay) is Slurm's; the id is what matters here.
            let id = id.split('+').next().unwrap_or(id);
            out.push(format!("{id}:{when}"));
        }
    }
    Ok(out)
}

/// Splits a directive into words as a POSIX shell would: quotes group, backslashes escape,
/// and a `#` at the start of a word begins a comment.
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("a ' quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch) => cur.push(ch),
                            None => return Err("a \" quote is not closed".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("a \" quote is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    cur.push(ch);
                }
            }
            ch => {
                in_word = true;
                cur.push(ch);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// An array's indices: `0-99`, `0-99:2` (a step), `1,5,9` or a mix, with `%N` for at most
/// N at once.
pub fn array_spec(v: &str) -> Result<(Vec<u32>, Option<u32>), String> {
    let bad = |why: &str| {
        format!("bad --array {v:?}: {why}; expected indices such as 0-99, 0-99:2, 1,5,9 or 0-99%8")
    };
    let (list, max) = match v.split_once('%') {
        Some((l, m)) => {
            let m: u32 = m
                .parse()
                .map_err(|_| bad("the limit after % is not a number"))?;
            if m == 0 {
                return Err(bad("the limit after % is 0"));
            }
            (l, Some(m))
        }
        None => (v, None),
    };
    let mut out = Vec::new();
    for part in list.split(',') {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| bad("an index is not a number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (b, step) = match b.split_once(':') {
                    Some((b, s)) => (b, num(s)?),
                    None => (b, 1),
                };
                let (a, b) = (num(a)?, num(b)?);
                if a > b || step == 0 {
                    return Err(bad("a range runs backwards or has a step of 0"));
                }
                if (b - a) / step >= 100_000 {
                    return Err(bad("a range has more than 100,000 indices"));
                }
                out.extend((a..=b).step_by(step as usize));
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok((out, max))
}

/// `--after` values: `JOB`, `JOB:ok`, `JOB:any`, `JOB:failed`, where JOB is a job's id, an
/// array's id (every job of the array) or one job of an array (`12_7`). The job as written,
/// and the condition.
pub fn after_spec(v: &str) -> Result<(String, qm_proto::After), String> {
    let (id, when) = match v.split_once(':') {
        Some((id, w)) => (id.trim(), w),
        None => (v.trim(), "ok"),
    };
    let bad = || {
        format!("bad --after {v:?}: expected JOB, JOB:ok, JOB:any or JOB:failed, JOB a job's id (12), an array's (12) or one of its jobs (12_7)")
    };
    let number = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match id.split_once('_') {
        None => number(id),
        Some((a, i)) => number(a) && number(i),
    };
    if !well_formed {
        return Err(bad());
    }
    let when = when
        .parse::<qm_proto::After>()
        .map_err(|e| format!("bad --after {v:?}: {e}"))?;
    Ok((id.to_string(), when))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qm_lines_are_flags_as_written_and_sbatch_lines_are_translated() {
        let script = "#!/bin/bash\n\
            #SBATCH --job-name=train\n\
            #SBATCH -N 2 --ntasks-per-node=4\n\
            #SBATCH --gres=gpu:8\n\
            #SBATCH -t 1-02:30:00\n\
            #SBATCH --dependency=afterok:12:13,afternotok:14\n\
            #SBATCH --output=run.log\n\
            #SBATCH --mail-user=a@b.c\n\
            #QM --time-limit 12h --env 'A=b c'  # the real limit\n\
            \n\
            python train.py\n\
            #SBATCH --array=0-3\n";
        let d = directives(script).unwrap();
        assert_eq!(
            d.flags,
            vec![
                "--tasks=8",
                "--gpus=2",
                "--name=train",
                "--time-limit=95400",
                "--after=12:ok",
                "--after=13:ok",
                "--after=14:failed",
                "--time-limit",
                "12h",
                "--env",
                "A=b c",
            ]
        );
        assert_eq!(d.ignored.len(), 2, "{:?}", d.ignored);
        assert!(d.ignored[0].contains("line 7") && d.ignored[0].contains("qm logs"));
        assert!(d.ignored[1].contains("--mail-user=a@b.c"));
    }

    #[test]
    fn gpus_per_task_and_typed_gres_are_read() {
        let d = directives("#SBATCH --nodes=4 --ntasks-per-node=8 --gpus-per-task=1\n").unwrap();
        assert_eq!(d.flags, vec!["--tasks=32", "--gpus=1"]);
        let d = directives("#SBATCH -N 2 -G 8 --ntasks-per-node=2 --mem=64G\n").unwrap();
        assert_eq!(d.flags, vec!["--tasks=4", "--gpus=2", "--mem=32768"]);
        assert!(directives("#SBATCH -N 3 -G 8\n").is_err());
        assert!(directives("#SBATCH --hold\n")
            .unwrap_err()
            .message
            .contains("held"));
        assert!(directives("#SBATCH -d afterok:1?afterok:2\n").is_err());
        let d = directives("#SBATCH --gres=gpu:a100:4\n#SBATCH -p big -A vision\n").unwrap();
        assert_eq!(
            d.flags,
            vec![
                "--gpus=4",
                "--gpu-model=a100",
                "--partition=big",
                "--team=vision"
            ]
        );
        let e = directives("#SBATCH --gres=gpu:8 --ntasks-per-node=3\n").unwrap_err();
        assert!(e.message.contains("shared evenly"), "{e}");
        let e = directives("#!/bin/sh\n#SBATCH --dependency=singleton\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("afterok"), "{e}");
    }

    #[test]
    fn slurm_times_and_arrays_and_dependencies() {
        assert_eq!(slurm_time("90").unwrap(), 5400);
        assert_eq!(slurm_time("10:30").unwrap(), 630);
        assert_eq!(slurm_time("2:00:00").unwrap(), 7200);
        assert_eq!(slurm_time("1-0").unwrap(), 86_400);
        assert_eq!(slurm_time("1-2:3").unwrap(), 86_400 + 7200 + 180);
        assert!(slurm_time("soon").is_err());
        assert!(slurm_time("0").is_err());
        assert_eq!(array_spec("0-3%2").unwrap(), (vec![0, 1, 2, 3], Some(2)));
        assert_eq!(array_spec("1,5,9").unwrap(), (vec![1, 5, 9], None));
        assert_eq!(array_spec("0-10:5,7").unwrap(), (vec![0, 5, 7, 10], None));
        assert!(array_spec("5-1").unwrap_err().contains("backwards"));
        assert!(array_spec("0-9%0").is_err());
        assert_eq!(
            after_spec("12:any").unwrap(),
            ("12".to_string(), qm_proto::After::Any)
        );
        assert_eq!(
            after_spec("12_3").unwrap(),
            ("12_3".to_string(), qm_proto::After::Ok)
        );
        assert!(after_spec("12_").unwrap_err().contains("12_7"));
        assert!(after_spec("x:ok").is_err());
        assert!(after_spec("12:maybe")
            .unwrap_err()
            .contains("ok, any, failed"));
        assert_eq!(
            shell_words(r#"a "b c" 'd e' f\ g # h"#).unwrap(),
            vec!["a", "b c", "d e", "f g"]
        );
        assert!(shell_words("'open").is_err());
    }
}
