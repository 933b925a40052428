//! What survives a crash: `kill -9` of the server (tasks re-attached, history kept, a gang
//! half-exited, a launch not yet delivered), a silent node, a restarted agent.

use std::process::Command;

use crate::harness::*;

#[test]
fn kill_9_of_the_server_loses_nothing_and_reattaches_running_tasks() {
    let up = Up::start("crash", &["--snapshot-every", "3"]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let long = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "sleep 4; echo finished",
    ]);
    let queued = up.submit(&["--team", "t", "--gpus", "4", "--", "true"]);
    up.wait_state(long, "running");
    let (dir, port) = (up.dir.clone(), up.port);
    let agent = up.agent_pid().unwrap();
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL
    up.child.wait().unwrap();
    std::mem::forget(up);
    let up = Up::start_in(dir, port, &["--snapshot-every", "3"]);
    assert_eq!(
        up.agent_pid(),
        Some(agent),
        "the agent kept running; no second one"
    );
    // The restart began from a snapshot (one every 3 events) and kept the job's history.
    assert!(
        up.banner
            .iter()
            .any(|l| l.contains("resumed from a snapshot at event")
                && !l.contains("snapshot at event 0 ")),
        "{:?}",
        up.banner
    );
    let whats: Vec<String> = up.job(long)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(whats[..2], ["queued", "started"], "{whats:?}");
    let j = up.wait_state(long, "succeeded");
    assert_eq!(j["attempt"], 1, "re-attached, not restarted");
    assert_eq!(logs(&up, long, 0).matches("finished").count(), 1);
    // Everything accepted is still there: the job that waited for the GPUs runs after it.
    let q = up.wait_state(queued, "succeeded");
    let at = |job: &serde_json::Value, what: &str| {
        job["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["what"] == what)
            .and_then(|e| e["at_s"].as_u64())
            .unwrap_or_else(|| panic!("no {what} event: {job}"))
    };
    assert!(
        at(&q, "started") >= at(&j, "succeeded"),
        "the queued job started only once the long one had ended: {q} {j}"
    );
    let teams = up.json(&["teams", "--json"]);
    assert!(teams.as_array().unwrap().iter().any(|t| t["name"] == "t"));
}

#[test]
fn a_silent_node_is_marked_down_and_its_jobs_requeued_whole() {
    let up = Up::start("down", &["--node-timeout-s", "2"]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team", "t", "--gpus", "2", "--tasks", "2", "--", "sleep", "300",
    ]);
    up.wait_state(id, "running");
    let agent = up.agent_pid().unwrap();
    unsafe { libc_kill(agent, 19) }; // SIGSTOP: the agent stops reporting
    let j = up.wait_state(id, "pending");
    let events: Vec<&str> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"requeued"), "{events:?}");
    let nodes = up.json(&["nodes", "--json"]);
    assert_eq!(nodes[0]["state"], "down");
    unsafe { libc_kill(agent, 18) }; // SIGCONT: it reports again
    let j = up.wait_state(id, "running");
    assert_eq!(j["attempt"], 2, "the whole gang started again");
    assert_eq!(up.json(&["nodes", "--json"])[0]["state"], "ready");
    up.ok(&["cancel", &id.to_string()]);
    up.wait_state(id, "cancelled");
}

#[test]
fn a_restarted_agent_ends_the_tasks_it_lost_and_their_jobs_run_again() {
    let up = Up::start("agent-restart", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo attempt $QM_ATTEMPT; sleep 317",
    ]);
    up.wait_state(id, "running");
    // Running on the server's side is the start it planned; the task has been launched (and
    // the agent has written it into its ledger) once its first output has come back.
    up.wait_for(|u| logs(u, id, 0).contains("attempt 1"));
    let node = up.json(&["nodes", "--json"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let old = up.agent_pid().unwrap();
    unsafe { libc_kill(old, 9) };
    // The task of the dead agent still runs, orphaned; a new agent on the node ends it.
    let mut agent = up
        .agent_command(&node, "agent")
        .arg("--allow-root-tasks")
        .spawn()
        .unwrap();
    up.wait_for(|u| u.job(id)["attempt"] == 2 && u.job(id)["state"] == "running");
    let j = up.job(id);
    let events: Vec<&str> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"lost"), "{events:?}");
    up.wait_for(|u| logs(u, id, 0).contains("attempt 2"));
    // Only the new run's task is alive.
    let ps = Command::new("sh")
        .args(["-c", "ps -eo args | grep -c '^sleep 317$'"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "1");
    up.ok(&["cancel", &id.to_string()]);
    up.wait_state(id, "cancelled");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_gang_whose_first_task_ended_before_a_server_crash_still_completes() {
    let up = Up::start("gang-crash", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--tasks",
        "2",
        "--",
        "sh",
        "-c",
        "if [ \"$QM_TASK_INDEX\" = 1 ]; then sleep 4; echo done; fi",
    ]);
    up.wait_for(|u| u.job(id)["placement"][0]["exit_code"] == 0);
    let (dir, port) = (up.dir.clone(), up.port);
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL, while task 1 still runs
    up.child.wait().unwrap();
    std::mem::forget(up);
    let up = Up::start_in(dir, port, &[]);
    let j = up.wait_state(id, "succeeded");
    assert_eq!(j["attempt"], 1, "re-attached, not restarted");
    assert!(logs(&up, id, 1).contains("done"));
}

#[test]
fn a_launch_lost_in_a_server_crash_is_sent_again() {
    let up = Up::start("lost-launch", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    // The agent dies: the node stays ready until its timeout, so the job starts and its
    // launch waits in the server's outbox.
    let agent = up.agent_pid().unwrap();
    unsafe { libc_kill(agent, 9) };
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo ran once",
    ]);
    up.wait_state(id, "running");
    let (dir, port) = (up.dir.clone(), up.port);
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL before any agent heard of the start
    up.child.wait().unwrap();
    std::mem::forget(up);
    // The restart starts a new agent; the launch is sent again.
    let up = Up::start_in(dir, port, &[]);
    assert_ne!(up.agent_pid(), Some(agent));
    let j = up.wait_state(id, "succeeded");
    assert_eq!(j["attempt"], 1);
    assert_eq!(logs(&up, id, 0).matches("ran once").count(), 1);
}
