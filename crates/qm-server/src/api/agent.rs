//! The agents' side: register with a join token, then heartbeats, the commands long poll
//! (`GET /agent/v1/commands?wait_s=`) and log uploads with the node's own credential.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use qm_core::{Event, NodeId, NodeSpec};
use qm_proto::{
    Commands, Heartbeat, HeartbeatAck, LogAck, LogChunk, RegisterRequest, RegisterResponse,
};
use qm_store::NodeRecord;
use serde::Deserialize;

use super::{Api, Body, Caller, Node, Params};
use crate::auth::Principal;
use crate::auth::{hash_token, new_token};
use crate::{Agent, Inner, Refusal, Server};

impl Inner {
    /// The node's live session, created on first contact, marked seen now.
    pub(crate) fn agent_seen(&mut self, node: u32) -> &mut Agent {
        let now = self.mono_ms();
        let agent = self.agents.entry(node).or_insert_with(|| Agent {
            last_seen: now,
            outbox: Vec::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        agent.last_seen = now;
        agent
    }

    /// What the server has for a node's agent: the commands in its outbox whose cause is
    /// durable, taken out. Launches count as received from now (a task missing from the
    /// node's heartbeats after that is lost).
    pub(crate) fn take_commands(&mut self, node: u32) -> Vec<qm_proto::Command> {
        let durable = self.journal.durable();
        let mut out: Vec<qm_proto::Command> = match self.agents.get_mut(&node) {
            Some(a) => {
                let (ready, held) = std::mem::take(&mut a.outbox)
                    .into_iter()
                    .partition(|(ticket, _)| *ticket <= durable);
                a.outbox = held;
                ready.into_iter().map(|(_, c)| c).collect()
            }
            None => Vec::new(),
        };
        // A launch of a run that has since ended (requeued while the node was away,
        // cancelled before its agent asked) must not start: only the current run's go out.
        out.retain(|c| match c {
            qm_proto::Command::Launch(l) => self
                .state
                .job(qm_core::JobId(l.key.job))
                .and_then(|j| j.state.run())
                .is_some_and(|r| {
                    r.attempt == l.key.attempt
                        && matches!(
                            self.state.job(qm_core::JobId(l.key.job)).map(|j| &j.state),
                            Some(qm_core::JobState::Running(_))
                        )
                }),
            qm_proto::Command::Kill { .. } => true,
        });
        let now = self.mono_ms();
        for c in &out {
            if let qm_proto::Command::Launch(l) = c {
                if let Some(sent) = self.sent.get_mut(&l.key) {
                    sent.at = now;
                }
            }
        }
        out
    }
}

/// Registers a node. A new name needs a join token (or an admin); a name already registered
/// needs that node's current credential (as the bearer token, or proposed in the request
/// beside a join token), or an admin, or a join token after an admin's `qm nodes reset
/// NAME`: a join token alone never takes over a node and the launches that follow.
#[utoipa::path(post, path = "/agent/v1/register", tag = "agent", request_body = RegisterRequest, responses((status = 200, description = "The node's credential for every later agent call", body = RegisterResponse)))]
pub async fn register(
    State(s): State<Arc<Server>>,
    Caller(who, token): Caller,
    Body(req): Body<RegisterRequest>,
) -> Api<RegisterResponse> {
    let credential = s.write(|inner| inner.register(&who, &token, &req)).await?;
    Ok(Json(RegisterResponse { credential }))
}

impl Inner {
    /// Registers a node for `who` (see [`register`]) and returns its credential: the one the
    /// agent chose (`req.credential`), else the bearer `token` of a node registering again,
    /// else a new one. Registering again with the same credential changes nothing, so an
    /// answer lost or overtaken on the way never locks a node out.
    pub(crate) fn register(
        &mut self,
        who: &Principal,
        token: &str,
        req: &RegisterRequest,
    ) -> Result<String, Refusal> {
        if !matches!(
            *who,
            Principal::Admin | Principal::Join | Principal::Node(_)
        ) {
            return Err(Refusal::Forbidden(
                "registering a node needs a join token or the node's own credential".into(),
            ));
        }
        crate::limits::node_name(&req.name).map_err(Refusal::BadRequest)?;
        if let Some(c) = &req.credential {
            crate::limits::credential(c).map_err(Refusal::BadRequest)?;
        }
        let proposed = req.credential.as_deref().map(hash_token);
        let id = match self.nodes.get(&req.name) {
            Some(n) => {
                let allowed = match *who {
                    Principal::Admin => true,
                    Principal::Node(caller) => caller == n.id,
                    // Reset by an admin: the name is free for a join token again. Or the
                    // same agent again, proving it holds the node's credential.
                    Principal::Join => {
                        n.credential_hash.is_empty()
                            || proposed.as_deref() == Some(n.credential_hash.as_str())
                    }
                    _ => false,
                };
                if !allowed {
                    let name = &req.name;
                    let message = format!(
                        "node {name} is registered already; registering it again needs its current credential (its agent keeps it in DATA_DIR/credential) or an admin (`qm nodes reset {name}`, then register with a join token)"
                    );
                    self.refused(&message);
                    let caller = match *who {
                        Principal::Node(c) => self.node_name(c),
                        _ => "(join token)".to_string(),
                    };
                    self.metrics.agent_refused(caller, "register");
                    return Err(Refusal::Forbidden(message));
                }
                n.id
            }
            None => {
                if let Principal::Node(caller) = *who {
                    return Err(Refusal::Forbidden(format!(
                        "the credential of node {} registers only that node, not {:?}; a new node needs a join token",
                        self.node_name(caller),
                        req.name
                    )));
                }
                self.nodes.next_id()
            }
        };
        let spec = NodeSpec {
            id: NodeId(id),
            name: req.name.clone(),
            gpus: req.gpus,
            gpu_model: req.gpu_model.clone(),
            gpu_mem_mib: req.gpu_mem_mib,
            cpu_milli: req.cpu_milli,
            mem_mib: req.mem_mib,
            labels: req.labels.clone(),
            topology: req.topology.clone(),
        };
        let credential = match (&req.credential, who) {
            (Some(c), _) => c.clone(),
            (None, Principal::Node(_)) => token.to_string(),
            (None, _) => new_token(),
        };
        // A credential names one node, and is nobody's token.
        let hash = hash_token(&credential);
        let taken = self.tokens.contains_key(&hash)
            || self.nodes.by_credential(&hash).is_some_and(|n| n != id);
        if taken {
            return Err(Refusal::BadRequest(
                "that credential is in use; let the agent choose a new one (remove its credential file)".into(),
            ));
        }
        let rec = NodeRecord {
            name: req.name.clone(),
            id,
            credential_hash: hash_token(&credential),
            address: req.address.clone(),
        };
        // A node already running jobs keeps them: re-registering only renews its credential.
        let known = self
            .state
            .node(NodeId(id))
            .is_some_and(|n| n.spec.gpus == spec.gpus && n.spec.gpu_model == spec.gpu_model);
        if !known {
            self.commit(vec![Event::NodeUp(spec)], &[])?;
        }
        self.journal.node(rec.clone());
        self.nodes.insert(rec);
        self.agent_seen(id);
        Ok(credential)
    }
}

#[utoipa::path(post, path = "/agent/v1/heartbeat", tag = "agent", request_body = Heartbeat, responses((status = 200, description = "Taken: the exits it reports are recorded", body = HeartbeatAck)))]
pub async fn heartbeat(
    State(s): State<Arc<Server>>,
    Node(node): Node,
    Body(hb): Body<Heartbeat>,
) -> Api<HeartbeatAck> {
    s.write(|inner| {
        inner.agent_seen(node);
        inner.heartbeat(node, hb)
    })
    .await?;
    Ok(Json(HeartbeatAck {}))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Seconds to wait for a command when there is none (default 25, at most 60).
    wait_s: Option<u64>,
}

#[utoipa::path(get, path = "/agent/v1/commands", tag = "agent", params(Wait), responses((status = 200, description = "Launches and kills for this node, as soon as there are any or when the wait is over", body = Commands)))]
pub async fn commands(
    State(s): State<Arc<Server>>,
    Node(node): Node,
    Params(w): Params<Wait>,
) -> Api<Commands> {
    let wake = s.lock().agent_seen(node).wake.clone();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(w.wait_s.unwrap_or(25).min(60));
    loop {
        let (out, held) = {
            let mut inner = s.lock();
            let out = inner.take_commands(node);
            let held = inner
                .agents
                .get(&node)
                .and_then(|a| a.outbox.iter().map(|(t, _)| *t).max());
            (out, held)
        };
        if !out.is_empty() {
            return Ok(Json(Commands { commands: out }));
        }
        let waited = match held {
            // Commands whose cause is being written: they go out once it is durable.
            Some(ticket) => tokio::time::timeout_at(deadline, s.journal.wait(ticket)).await,
            None => tokio::time::timeout_at(deadline, wake.notified()).await,
        };
        if waited.is_err() {
            return Ok(Json(Commands {
                commands: s.lock().take_commands(node),
            }));
        }
    }
}

#[utoipa::path(post, path = "/agent/v1/logs", tag = "agent", operation_id = "upload_logs", request_body = LogChunk, responses((status = 200, description = "Stored; the next offset to send from", body = LogAck)))]
pub async fn logs(
    State(s): State<Arc<Server>>,
    Node(node): Node,
    Body(chunk): Body<LogChunk>,
) -> Api<LogAck> {
    let decoded = match &chunk.data_b64 {
        Some(b) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Refusal::BadRequest(format!("data_b64 is not base64: {e}")))?,
        ),
        None => None,
    };
    let data: &[u8] = decoded.as_deref().unwrap_or(chunk.data.as_bytes());
    let max = {
        let inner = s.lock();
        let most = inner.config.max_log_chunk.min(crate::MAX_LOG_CHUNK);
        if data.len() > most {
            return Err(Refusal::BadRequest(format!(
                "a log chunk of {} bytes; send at most {most} at once (qm server --max-log-chunk-kib)",
                data.len(),
            )));
        }
        inner.speaks_for(node, &chunk.key, "log chunk", false)?;
        inner.config.max_log_bytes
    };
    // Logs go to the store directly, not through the journal: they are not events, and this
    // answer says how much is stored. The server's lock is not held meanwhile.
    let mut store = s.journal.store();
    let k = &chunk.key;
    let key = (k.job, k.task, k.attempt);
    // What the agent has sent, as far as it knows, once this chunk is taken.
    let sent = chunk.offset + data.len() as u64;
    let len = store.log_len(key)?;
    if len >= max {
        // The log is full (its marker written): the rest is dropped, and acknowledged so that
        // the agent moves on.
        return Ok(Json(LogAck { length: sent }));
    }
    if chunk.offset > len {
        return Err(Refusal::Conflict(format!(
            "the log of job {} task {} (attempt {}) has {len} bytes; a chunk at offset {} would leave a gap: send from offset {len}",
            k.job, k.task, k.attempt, chunk.offset
        )));
    }
    if sent <= max {
        let length = store.append_log(key, chunk.offset, data)?;
        return Ok(Json(LogAck { length }));
    }
    // This chunk crosses the limit: keep what fits, then say what was dropped.
    let keep = (max.saturating_sub(chunk.offset) as usize).min(data.len());
    store.append_log(key, chunk.offset, &data[..keep])?;
    let stored = store.log_len(key)?;
    let marker = format!(
        "\n[qm: this task's output passed {max} bytes, the limit per task (qm server --max-log-mib); the rest is dropped]\n"
    );
    store.append_log(key, stored, marker.as_bytes())?;
    Ok(Json(LogAck { length: sent }))
}
