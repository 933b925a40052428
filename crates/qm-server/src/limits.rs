//! Limits on what a request may carry, each refused with a message that names the limit.

/// A node's name: what `qm nodes` shows and agents register under.
pub fn node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not allowed; use 1 to 63 letters, digits, '.', '-' or '_' (a host name such as \"gpu-07\")"
        ))
    }
}
