//! Bad requests get a clear 4xx and change nothing.

use crate::harness::*;

#[test]
fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let up = Up::start("bad", &[]);
    up.ok(&["admin", "team", "create", "a", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "b", "--guaranteed", "2"]);
    let admin = up.token();
    let a_job = up.submit(&["--team", "a", "--gpus", "1", "--", "sleep", "300"]);
    let member_b = up.ok(&[
        "admin", "token", "create", "--name", "bob", "--role", "member", "--team", "b",
    ]);
    let member_b = member_b.trim();
    let before = up.json(&["jobs", "--json"]);
    let policy_of_a = |up: &Up| {
        let teams = up.json(&["teams", "--json"]);
        let a = teams
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "a")
            .cloned();
        let a = a.unwrap();
        (a["idle_policy"].clone(), a["idle_release_after_s"].clone())
    };
    let policy_before = policy_of_a(&up);
    let cancel_a = format!("/api/v1/jobs/{a_job}/cancel");
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            "{not json".into(),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"nobody","command":["true"]}"#.into(),
            400,
            "nobody",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","gpus":0,"command":["true"]}"#.into(),
            400,
            "no GPU and no CPU",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","gpus":0,"cpu_milli":1000,"gpu_model":"SIM","command":["true"]}"#.into(),
            400,
            "names a GPU model",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","time_limit_s":-5,"command":["true"]}"#.into(),
            400,
            "time_limit_s is -5",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","checkpoint_every_s":0,"command":["true"]}"#.into(),
            400,
            "checkpoint_every_s is 0",
        ),
        (
            "POST",
            "/api/v1/admin/teams",
            Some(&admin),
            r#"{"name":"a","idle_policy":"yield","idle_release_after_s":600}"#.into(),
            400,
            "idle_release_after_s goes with idle_policy \"release\"",
        ),
        (
            "POST",
            "/api/v1/admin/teams",
            Some(&admin),
            r#"{"name":"a","idle_policy":"release","idle_release_after_s":0}"#.into(),
            400,
            "idle_release_after_s is 0",
        ),
        (
            "POST",
            "/api/v1/admin/teams",
            Some(&admin),
            r#"{"name":"a","idle_policy":"sometimes"}"#.into(),
            400,
            "unknown variant `sometimes`, expected one of `warn`, `yield`, `release`",
        ),
        (
            "POST",
            "/api/v1/jobs",
            None,
            r#"{"team":"a","command":["true"]}"#.into(),
            401,
            "no token",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("qm_wrong"),
            r#"{"team":"a","command":["true"]}"#.into(),
            401,
            "unknown token",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(member_b),
            r#"{"team":"a","command":["true"]}"#.into(),
            403,
            "team \"a\"",
        ),
        (
            "POST",
            &cancel_a,
            Some(member_b),
            "{}".into(),
            403,
            "team \"a\"",
        ),
        (
            "GET",
            "/api/v1/jobs/999999",
            Some(&admin),
            String::new(),
            404,
            "no job 999999",
        ),
    ];
    for (method, path, token, body, status, says) in &cases {
        let (code, err) = http(&up, method, path, *token, body);
        assert_eq!(code, *status, "{method} {path} {body}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path} {body}: {message}");
    }
    let after = up.json(&["jobs", "--json"]);
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len(),
        "nothing submitted"
    );
    assert_eq!(up.job(a_job)["state"], "running", "nothing cancelled");
    assert_eq!(policy_of_a(&up), policy_before, "no team changed");
    // The CLI exits 1 with the server's message.
    let out = up.qm(&["submit", "--team", "nobody", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    // A member's tasks run as the member, whatever user the request names.
    let (code, r) = http(
        &up,
        "POST",
        "/api/v1/jobs",
        Some(member_b),
        r#"{"team":"b","user":"root","command":["true"]}"#,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(up.job(r["job"].as_u64().unwrap())["user"], "bob");
    let (code, _) = http(&up, "GET", "/api/openapi.json", None, "");
    assert_eq!(code, 401, "the API document needs a token too");
    let (code, doc) = http(&up, "GET", "/api/openapi.json", Some(&admin), "");
    assert_eq!(code, 200);
    assert!(doc["paths"]["/api/v1/jobs"].is_object());
}
