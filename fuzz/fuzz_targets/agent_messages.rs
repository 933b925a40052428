//! The agent messages: any bytes as a heartbeat, a log chunk or a registration (the first
//! byte picks which, and whose credential sends it) are taken or refused with a 4xx, never a
//! 5xx or a panic, and a scheduling round runs after each.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let f = common::fixture();
    let node = &f.nodes[usize::from(pick & 1)];
    let (path, token) = match (pick >> 1) % 3 {
        0 => ("/agent/v1/heartbeat", node.as_str()),
        1 => ("/agent/v1/logs", node.as_str()),
        _ => ("/agent/v1/register", f.join.as_str()),
    };
    let status = f.send("POST", path, token, body);
    assert!(status < 500, "{path} was answered {status}");
    f.server.tick().expect("a scheduling round");
});
