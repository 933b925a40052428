//! Bearer tokens: random, shown once, stored as SHA-256 hashes.

use sha2::{Digest, Sha256};

/// A new random token: `qm_` and 40 hex digits (160 bits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).expect("the OS random source");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("qm_{hex}")
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// A member of these teams, under the token's name (the Unix user its tasks run as).
    Member {
        name: String,
        teams: Vec<String>,
    },
    /// May register nodes only.
    Join,
    /// A registered node's agent.
    Node(u32),
}

impl Principal {
    pub fn may_use_team(&self, team: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Member { teams, .. } => teams.iter().any(|t| t == team),
            _ => false,
        }
    }
}
