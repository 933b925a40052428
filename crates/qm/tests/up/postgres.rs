//! `qm server` on PostgreSQL, with real processes: a throwaway database on the server that
//! `scripts/test` starts (`QM_TEST_PG`); the test fails, never skips, without it.
//!
//! `kill -9` of the server loses nothing it answered 2xx for, and the restarted server
//! re-attaches the tasks that ran on through the crash.

use serde_json::{json, Value};

use crate::harness::{
    call, free_port, start_agent, start_server_on, team_and_join_token, wait_until,
};

/// A new, empty database on the tests' PostgreSQL.
fn database() -> String {
    let base = std::env::var("QM_TEST_PG").expect(
        "QM_TEST_PG is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL and sets it",
    );
    qm_store::pg::throwaway_database(&base).expect("a throwaway database")
}

#[test]
fn on_postgres_kill_9_of_the_server_loses_nothing_and_reattaches_running_tasks() {
    let dir = std::env::temp_dir().join(format!("qm-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = database();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let (server, admin) = start_server_on(&db, &listen, &["--snapshot-every", "5"]);
    let admin = admin.expect("an admin token on first start");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&url, &admin, method, path, body).expect("the server answers")
    };
    team_and_join_token(&url, &admin, &dir, 4);
    let agent = start_agent(&dir, &url, "a", None);
    wait_until("node a ready", 30, || {
        let (_, nodes) = api("GET", "/api/v1/nodes", None);
        nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["name"] == "a" && x["state"] == "ready"))
            .then_some(())
    });
    let submit = |gpus: u32, command: &[&str]| {
        let (s, r) = api(
            "POST",
            "/api/v1/jobs",
            Some(json!({"team": "t", "gpus": gpus, "command": command})),
        );
        assert_eq!(s, 200, "{r}");
        r["job"].as_u64().unwrap()
    };
    let long = submit(1, &["sh", "-c", "sleep 4; echo finished"]);
    let queued = submit(4, &["true"]);
    let many: Vec<u64> = (0..20).map(|_| submit(1, &["true"])).collect();
    wait_until("the long job running", 30, || {
        let (_, j) = api("GET", &format!("/api/v1/jobs/{long}"), None);
        (j["state"] == "running").then_some(())
    });
    drop(server); // SIGKILL
    let (server, again) = start_server_on(&db, &listen, &["--snapshot-every", "5"]);
    assert!(again.is_none(), "the admin token was kept: no new one");
    let job = |id: u64| {
        let (s, j) = api("GET", &format!("/api/v1/jobs/{id}"), None);
        assert_eq!(
            s, 200,
            "job {id} answered 2xx before the crash is gone: {j}"
        );
        j
    };
    // Everything answered 2xx is there.
    for &id in many.iter().chain([&long, &queued]) {
        job(id);
    }
    let done = wait_until("the long job to succeed", 60, || {
        let j = job(long);
        (j["state"] == "succeeded").then_some(j)
    });
    assert_eq!(done["attempt"], 1, "re-attached, not restarted: {done}");
    // Its output, uploaded to the new server, is stored in PostgreSQL: once.
    let log = wait_until("the long job's output", 30, || {
        let (s, log) = api("GET", &format!("/api/v1/jobs/{long}/logs?task=0"), None);
        assert_eq!(s, 200, "{log}");
        let data = log["data"].as_str().unwrap_or("").to_string();
        data.contains("finished").then_some(data)
    });
    assert_eq!(log.matches("finished").count(), 1, "{log}");
    for &id in many.iter().chain([&queued]) {
        wait_until("every accepted job to succeed", 60, || {
            (job(id)["state"] == "succeeded").then_some(())
        });
    }
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
