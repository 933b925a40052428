//! What the server's test binaries share.

use std::collections::BTreeMap;

use qm_proto::RegisterRequest;

/// A node of 4 simulated GPUs, 8 cores and 8 GiB named `name`, registering as its agent
/// would (without a credential of its own choosing).
pub fn node_request(name: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        gpus: 4,
        gpu_model: "SIM".into(),
        gpu_mem_mib: 0,
        cpu_milli: 8000,
        mem_mib: 8192,
        labels: BTreeMap::new(),
        topology: Vec::new(),
        address: "127.0.0.1".into(),
        credential: None,
    }
}
