//! The dashboard in a real headless Chromium: sign-in, live jobs, a preemption.

use qm::cdp;
use std::path::PathBuf;

use crate::harness::*;

#[test]
fn the_dashboard_shows_jobs_live_and_a_preemption_behind_a_sign_in() {
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let up = Up::start("dash", &[]);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "0"]);
    let mut b = cdp::Browser::launch();
    b.goto(&format!("{}/", up.url()));
    // No token: the sign-in form and no data.
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    assert_eq!(b.eval("document.querySelector('#nav').hidden"), true);
    let (code, _) = http(&up, "GET", "/api/v1/stream", None, "");
    assert_eq!(code, 401, "the stream needs a token");
    b.screenshot(&shots.join("1-sign-in.png"));
    b.eval("document.querySelector('#token').value = 'qm_wrong'; document.querySelector('#signin-button').click(); true");
    b.wait_for(
        "document.querySelector('#signin-error').textContent.includes('refused')",
        "a refusal",
    );
    // The refused token's 401 is the one error the console shows.
    let errors = b.take_errors();
    assert!(
        !errors.is_empty() && errors.iter().all(|e| e.contains("401")),
        "the refusal is reported, and nothing else: {errors:?}"
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    // Sign in.
    let token = up.token();
    b.eval(&format!("document.querySelector('#token').value = '{token}'; document.querySelector('#signin-button').click(); true"));
    b.wait_for(
        "document.querySelector('#live').textContent === 'live'",
        "the live stream",
    );
    b.wait_for("document.querySelector('#c-gpus') && document.querySelector('#c-gpus b').textContent === '4'", "the overview");
    // A job appears pending, then running.
    let busy: Vec<u64> = (0..4)
        .map(|_| up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]))
        .collect();
    let waiting = up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]);
    b.goto(&format!("{}/#/jobs", up.url()));
    let cell = |id: u64| format!("document.querySelector('#job-{id} td:nth-child(3)')");
    b.wait_for(
        &format!("{c} && {c}.textContent === 'pending'", c = cell(waiting)),
        "the job pending",
    );
    b.screenshot(&shots.join("2-pending.png"));
    up.ok(&["cancel", &busy[0].to_string()]);
    b.wait_for(
        &format!("{c} && {c}.textContent === 'running'", c = cell(waiting)),
        "the job running",
    );
    b.screenshot(&shots.join("3-running.png"));
    // A preemption, on the victim's job page.
    let owner = up.submit(&["--team", "owner", "--gpus", "2", "--", "sleep", "300"]);
    up.wait_state(owner, "running");
    let victim = busy[1..]
        .iter()
        .chain([&waiting])
        .copied()
        .find(|&j| up.job(j)["preemptions"] == 1)
        .expect("a borrowed job was preempted");
    b.goto(&format!("{}/#/jobs/{victim}", up.url()));
    b.wait_for(
        &format!("document.querySelector('#events') && document.querySelector('#events').innerText.includes('preempted: GPUs reclaimed for job {owner}')"),
        "the preemption on the job page",
    );
    b.screenshot(&shots.join("4-preempted.png"));
    for (page, ready) in [
        ("overview", "#c-gpus"),
        ("teams", "#teams"),
        ("queue", "#queue"),
        ("nodes", "#heat"),
    ] {
        b.goto(&format!("{}/#/{page}", up.url()));
        b.wait_for(&format!("document.querySelector('{ready}')"), page);
        b.screenshot(&shots.join(format!("5-{page}.png")));
    }
    b.goto(&format!("{}/#/teams", up.url()));
    b.wait_for("document.querySelector('#teams') && document.querySelector('#teams').innerText.includes('owner')", "the teams table");
    assert_eq!(b.take_errors(), Vec::<String>::new(), "console errors");
    // Signing out leaves no data on the page.
    b.eval("document.querySelector('#signout').click(); true");
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form again",
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    eprintln!("dashboard screenshots: {}", shots.display());
}

#[test]
fn the_teams_page_says_what_each_teams_idle_policy_does_next() {
    let up = Up::start("dash-idle", &["--idle-window-s", "2"]);
    up.ok(&["admin", "team", "create", "lab", "--guaranteed", "4"]);
    let idle = up.submit(&["--team", "lab", "--gpus", "1", "--", "sleep", "300"]);
    up.wait_state(idle, "running");
    up.wait_for(|u| u.job(idle)["idle"]["yielding"] == true);
    let mut b = signed_in(&up);
    b.goto(&format!("{}/#/teams", up.url()));
    // The default policy: yielding now, released an hour after the window.
    b.wait_for(
        &format!("document.querySelector('#teams') && document.querySelector('#teams').innerText.includes('job {idle}: yielding, released in') && document.querySelector('#teams').innerText.includes('(release)')"),
        "the idle job on the teams page",
    );
    up.ok(&["cancel", &idle.to_string()]);
}

#[test]
fn the_report_page_shows_each_teams_use_over_time_with_a_shareable_url() {
    let up = Up::start("dash-report", &["--usage-every", "1s"]);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "0"]);
    let jobs: Vec<u64> = (0..3)
        .map(|_| up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]))
        .collect();
    for &j in &jobs {
        up.wait_state(j, "running");
    }
    // A few samples of the borrower on three GPUs, two of them the owner's, lent.
    up.wait_for(|u| {
        let r = u.json(&["report", "--since", "1h", "--json"]);
        r["samples"].as_u64().unwrap_or(0) >= 3
    });
    let mut b = signed_in(&up);
    // The page has an address of its own: opened directly, with its window.
    b.goto(&format!("{}/#/report/1d", up.url()));
    b.wait_for(
        "document.querySelector('#report-borrower') && document.querySelector('#view h1').innerText.includes('1d')",
        "the report table",
    );
    let row: String = b
        .eval("document.querySelector('#report-borrower').innerText")
        .as_str()
        .unwrap()
        .to_string();
    assert!(row.contains("borrower"), "{row}");
    // A chart per team, with a time axis and the values of each sample on hover.
    b.wait_for(
        "document.querySelectorAll('#chart-borrower polyline').length === 5",
        "the borrower's chart",
    );
    let hover: String = b
        .eval("document.querySelector('#chart-borrower circle title').textContent")
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        hover.contains("used") && hover.contains("borrowed") && hover.contains("GPUs"),
        "{hover}"
    );
    let lent: String = b
        .eval("document.querySelector('#report-owner').innerText")
        .as_str()
        .unwrap()
        .to_string();
    assert!(lent.contains("owner"), "{lent}");
    // The page's icon is inline: no request for a favicon that is not there.
    assert_eq!(
        b.eval("document.querySelector('link[rel=icon]').href.startsWith('data:')"),
        true
    );
    // The queue folds an array's pending jobs into one row, and filters by what is typed.
    let array = up.submit(&["--team", "borrower", "--array", "0-4", "--", "sleep", "300"]);
    let single = up.submit(&["--team", "owner", "--gpus", "4", "--", "sleep", "300"]);
    b.goto(&format!("{}/#/queue", up.url()));
    b.wait_for(
        &format!("document.querySelector('#array-{array}') && document.querySelector('#array-{array}').innerText.includes('× 4 pending')"),
        "the array's row in the queue",
    );
    b.eval("const f = document.querySelector('#queue-filter'); f.value = 'owner'; f.dispatchEvent(new Event('input')); true");
    b.wait_for(
        &format!("!document.querySelector('#array-{array}') && document.querySelector('#queue').innerText.includes('{single}')"),
        "the filtered queue",
    );
    assert_eq!(b.take_errors(), Vec::<String>::new(), "console errors");
    up.ok(&["cancel", "--team", "borrower"]);
    up.ok(&["cancel", &single.to_string()]);
    drop(jobs);
}

/// Signed in as a member: their team first on the teams and report pages; the heat map tells
/// a hovered GPU's node, job, team and utilisation, and finds a job or team; the queue pages
/// past its first hundred; every view is a URL that opens as it was; no console errors.
#[test]
fn a_member_sees_their_team_first_the_heat_map_tells_and_finds_and_the_queue_pages() {
    let up = Up::start("dash-member", &["--usage-every", "1s"]);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "1"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "0"]);
    up.ok(&["admin", "team", "create", "zeta", "--guaranteed", "1"]);
    let token = up.ok(&[
        "admin", "token", "create", "--name", "zed", "--role", "member", "--team", "zeta",
    ]);
    let zeta = up.submit(&["--team", "zeta", "--gpus", "1", "--", "sleep", "300"]);
    let owner = up.submit(&["--team", "owner", "--gpus", "1", "--", "sleep", "300"]);
    up.wait_state(zeta, "running");
    up.wait_state(owner, "running");
    // Two GPUs are left: two of the array's 250 jobs borrow them, 248 wait.
    let array = up.submit(&[
        "--team", "borrower", "--array", "0-249", "--", "sleep", "300",
    ]);
    up.wait_for(|u| {
        let jobs = u.json(&["jobs", "--array", &array.to_string(), "--expand", "--json"]);
        jobs.as_array()
            .map_or(0, |a| a.iter().filter(|j| j["state"] == "running").count())
            == 2
    });
    up.wait_for(|u| {
        u.json(&["report", "--since", "1h", "--json"])["samples"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let mut b = cdp::Browser::launch();
    b.goto(&format!("{}/", up.url()));
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    b.eval(&format!("document.querySelector('#token').value = '{}'; document.querySelector('#signin-button').click(); true", token.trim()));
    b.wait_for(
        "document.querySelector('#live').textContent === 'live'",
        "the live stream",
    );
    // Their team first, marked, on the teams page and in the report.
    b.goto(&format!("{}/#/teams", up.url()));
    b.wait_for(
        "document.querySelector('#teams tr:nth-child(2)') && document.querySelector('#teams tr:nth-child(2)').innerText.startsWith('zeta (yours)')",
        "the member's team first",
    );
    b.goto(&format!("{}/#/report/1d", up.url()));
    b.wait_for(
        "document.querySelector('#report tr:nth-child(2)') && document.querySelector('#report tr:nth-child(2)').id === 'report-zeta' && document.querySelector('#report-charts .team-chart').id === 'chart-zeta'",
        "the member's team first in the report",
    );
    // The heat map: hovering the GPU that runs zeta's job names it.
    let job = up.job(zeta);
    let node = job["placement"][0]["node"].as_str().unwrap().to_string();
    let gpu = job["placement"][0]["gpus"][0].as_u64().unwrap();
    b.goto(&format!("{}/#/nodes", up.url()));
    b.wait_for(
        "window.qmHeatCell && document.querySelector('#heat') && window.qmHeatCell && true",
        "the heat map",
    );
    b.wait_for(
        &format!("window.qmHeatCell('{node}', {gpu})"),
        "the GPU's cell",
    );
    let at = b.eval(&format!("window.qmHeatCell('{node}', {gpu})"));
    b.mouse_move(at["x"].as_f64().unwrap(), at["y"].as_f64().unwrap());
    b.wait_for(
        "!document.querySelector('#heat-tip').hidden",
        "the hover details",
    );
    let tip = b.eval("document.querySelector('#heat-tip').innerText");
    let tip = tip.as_str().unwrap();
    for want in [
        node.as_str(),
        &format!("GPU {gpu}"),
        &format!("job {zeta} (zeta)"),
        "utilisation",
    ] {
        assert!(tip.contains(want), "{want:?} not in {tip:?}");
    }
    // The search finds the job's GPU by its id, and puts the search in the URL.
    b.eval(&format!("const f = document.querySelector('#node-search'); f.value = '{zeta}'; f.dispatchEvent(new Event('input')); true"));
    b.wait_for(
        "document.querySelector('#node-hits') && document.querySelector('#node-hits').innerText === '1 nodes, 1 GPUs match'",
        "the search's hits",
    );
    assert_eq!(b.eval("location.hash"), format!("#/nodes?q={zeta}"));
    // Opened from a shared URL: the same search.
    b.goto(&format!("{}/#/nodes?q=borrower", up.url()));
    b.wait_for(
        "document.querySelector('#node-hits') && document.querySelector('#node-hits').innerText === '1 nodes, 2 GPUs match' && document.querySelector('#node-search').value === 'borrower'",
        "the team's GPUs found from the URL",
    );
    // The queue: the first page from the snapshot, the next ones from the server.
    b.goto(&format!("{}/#/queue", up.url()));
    b.wait_for(
        &format!("document.querySelector('#array-{array}') && document.querySelector('#array-{array}').innerText.includes('× 100 pending') && document.querySelector('#pager').innerText.includes('page 1 of 3')"),
        "the queue's first page",
    );
    b.eval("document.querySelector('#queue-next').click(); true");
    b.wait_for(
        &format!("location.hash === '#/queue?page=2' && document.querySelector('#array-{array}') && document.querySelector('#array-{array}').innerText.includes('× 100 pending') && document.querySelector('#pager').innerText.includes('page 2 of 3')"),
        "the queue's second page",
    );
    b.goto(&format!("{}/#/queue?page=3", up.url()));
    b.wait_for(
        &format!("document.querySelector('#array-{array}') && document.querySelector('#array-{array}').innerText.includes('× 48 pending') && document.querySelector('#pager').innerText.includes('page 3 of 3')"),
        "the queue's last page, opened from its URL",
    );
    b.goto(&format!("{}/#/queue?q=nothing-matches-this", up.url()));
    b.wait_for(
        "document.querySelector('#queue') && document.querySelector('#queue').innerText.includes('no pending job matches')",
        "an empty filter",
    );
    for (page, ready) in [
        ("overview".to_string(), "#c-gpus"),
        ("jobs".to_string(), "#jobs"),
        (format!("jobs/{zeta}"), "#job-state"),
    ] {
        b.goto(&format!("{}/#/{page}", up.url()));
        b.wait_for(&format!("document.querySelector('{ready}')"), &page);
    }
    assert_eq!(b.take_errors(), Vec::<String>::new(), "console errors");
    up.ok(&["cancel", &array.to_string()]);
}

/// A browser on the dashboard, signed in with the admin token, its live stream open.
fn signed_in(up: &Up) -> cdp::Browser {
    let mut b = cdp::Browser::launch();
    b.goto(&format!("{}/", up.url()));
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    let token = up.token();
    b.eval(&format!("document.querySelector('#token').value = '{token}'; document.querySelector('#signin-button').click(); true"));
    b.wait_for(
        "document.querySelector('#live').textContent === 'live'",
        "the live stream",
    );
    b
}
