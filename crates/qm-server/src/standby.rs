//! The HTTP face of a `qm server` that does not lead (yet): it listens from the start, so
//! that clients and agents that reach it learn where the leader is instead of finding a
//! closed port, and becomes the server's API the moment it takes the lease
//! ([`Gate::open`]). A standby never answers from state of its own: it holds none.

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use qm_proto::ApiError;
use tower::ServiceExt as _;

/// The header on a standby's answers.
pub const STANDBY_HEADER: &str = "qm-standby";

/// Who leads, as a standby last read it from the database.
#[derive(Clone, Debug, Default)]
pub struct LeaderSeen {
    /// The leader's name for itself (its advertised URL first), and its term.
    pub holder: String,
    pub term: i64,
}

/// Until opened, answers every request `503 standby` with the leader's address; then
/// passes every request to the API.
#[derive(Default)]
pub struct Gate {
    app: OnceLock<Router>,
    leader: Mutex<Option<LeaderSeen>>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Records who leads now (`None`: nobody holds the lease).
    pub fn leader_is(&self, leader: Option<LeaderSeen>) {
        *self.leader.lock().expect("the gate's lock is poisoned") = leader;
    }

    /// From now on every request goes to `app`.
    pub fn open(&self, app: Router) {
        let _ = self.app.set(app);
    }

    /// The router to serve: the gate in front of whatever it opens to.
    pub fn router(self: &Arc<Self>) -> Router {
        let gate = self.clone();
        Router::new().fallback(move |req: Request| {
            let gate = gate.clone();
            async move {
                match gate.app.get() {
                    Some(app) => match app.clone().oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                    None => gate.standby(),
                }
            }
        })
    }

    fn standby(&self) -> Response {
        let leader = self
            .leader
            .lock()
            .expect("the gate's lock is poisoned")
            .clone();
        let (message, url) = match leader {
            Some(l) => {
                let url = leader_url(&l.holder);
                (
                    format!(
                        "this server stands by and holds no state; {} leads (term {}): send requests there, or give every server (--server URL1,URL2 or QM_SERVER) and the leader is found",
                        l.holder, l.term
                    ),
                    url,
                )
            }
            None => (
                "this server stands by and holds no state; no server leads right now (one takes over within the lease): try again in a few seconds".to_string(),
                None,
            ),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            // Clients move on to their next server on this header alone, without reading
            // the body: whatever the request was, a standby did nothing with it.
            [(STANDBY_HEADER, "1")],
            Json(ApiError {
                error: "standby".into(),
                message,
                leader: url,
            }),
        )
            .into_response()
    }
}

/// The URL a leader advertises: the first word of its holder name, where it is one.
pub fn leader_url(holder: &str) -> Option<String> {
    holder
        .split_whitespace()
        .next()
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(str::to_string)
}
