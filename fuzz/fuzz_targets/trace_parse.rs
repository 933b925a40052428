//! The trace loaders: any bytes, read as each format (the first byte picks it), give a trace
//! or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_sim::trace::{self, Format};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 6 {
        n @ 0..=3 => {
            let _ = trace::parse("fuzz.csv", &text, Format::ALL[n as usize]);
        }
        4 => {
            let _ = trace::openb::parse_pods("fuzz_pods.csv", &text);
        }
        _ => {
            let _ = trace::openb::parse_nodes("fuzz_nodes.csv", &text);
        }
    }
});
