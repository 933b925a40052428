//! The submit body: any bytes POSTed to /api/v1/jobs by an admin are accepted or refused with
//! a 4xx, never a 5xx or a panic; whatever was accepted, a scheduling round (node timeouts,
//! a plan, its launches) runs on it, then it is cancelled (so the queue stays short and
//! every input is as fast as the first) and another round runs.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = common::fixture();
    let (status, body) = f.send_read("POST", "/api/v1/jobs", &f.admin, data);
    assert!(status < 500, "a submission was answered {status}");
    if status == 200 {
        f.server.tick().expect("a scheduling round");
        let job = body["job"]
            .as_u64()
            .expect("an accepted submission names its job");
        let path = format!("/api/v1/jobs/{job}/cancel");
        let status = f.send("POST", &path, &f.admin, b"");
        assert_eq!(status, 200, "cancelling job {job}");
        f.server.tick().expect("a scheduling round");
    }
});
