//! The event log's decoding and replay: each line of the input is decoded as a stored event
//! (JSON, as the store keeps them) and applied to a cluster state, as a restart replays the
//! log. A line that does not decode, or an event the state refuses, is an error; a panic, a
//! broken invariant of the state or a planner that panics on what was applied is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_core::{apply, plan, ClusterState, Event, SchedulerConfig};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut state = ClusterState::new(SchedulerConfig::default());
    let mut now = 0;
    for line in text.lines().take(64) {
        let Ok(event) = serde_json::from_str::<Event>(line) else {
            continue;
        };
        if let Some(at) = event_time(&event) {
            now = now.max(at);
        }
        if apply(&mut state, event).is_ok() {
            state.check_invariants();
        }
    }
    let _ = plan(&state, now);
});

/// When an event happened, where it says.
fn event_time(e: &Event) -> Option<u64> {
    serde_json::to_value(e)
        .ok()?
        .as_object()?
        .values()
        .find_map(|v| v.get("at_s").and_then(|t| t.as_u64()))
}
