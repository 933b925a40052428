//! Persistence behind one trait, [`Store`], with its SQLite backend, [`SqliteStore`].
//!
//! The server's state is the scheduling core's `ClusterState`, and it changes only through
//! `qm_core::Event`s. The store keeps those events in an append-only log (a batch is one
//! transaction, synced before the API answers), a snapshot of the state now and then so a
//! restart replays only the events after it, and beside them what the core does not model:
//! each job's payload (command, environment, working directory), API tokens (hashed), node
//! credentials (hashed) and the log bytes tasks printed.

use std::path::Path;

pub mod pg;
mod pg_tls;
pub use pg::{PgStore, PgTarget};

use qm_core::{ClusterState, Event};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

/// Something the store could not do.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(format!("bad JSON: {e}"))
    }
}

/// What a job runs: what the scheduling core does not need to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobPayload {
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Fenced by its agents (see `SubmitRequest::fence`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fence: bool,
    /// The batch script it runs, if any (`SubmitRequest::script`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// An API token: only its SHA-256 is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub hash: String,
    pub name: String,
    pub role: qm_proto::Role,
    pub teams: Vec<String>,
}

/// A registered node: its name, the core's id for it and the hash of its credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub id: u32,
    pub credential_hash: String,
    pub address: String,
}

/// An ended job the server no longer holds in memory (see `qm server --retain-ended`): its
/// accounting record, written in the same transaction as the event that forgets it, so that
/// `qm show` and `qm jobs --all` still find it. The columns are what lists filter on; `view`
/// is the whole record as the API shows it (a `qm_proto::JobView`, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedJob {
    pub id: u64,
    pub team: String,
    pub user: String,
    /// The job's last state (`succeeded`, `failed`, `cancelled`).
    pub state: String,
    pub submit_s: u64,
    pub end_s: u64,
    pub view: String,
}

/// One team's GPUs at one moment, as the server samples them (every `--usage-every`): the
/// API's own type, stored as it is served.
pub use qm_proto::UsagePoint as UsageRow;

/// Which ended jobs to list, newest (highest id) first.
#[derive(Clone, Debug, Default)]
pub struct EndedQuery {
    /// Only these teams' (the teams a caller may see; `None`: every team).
    pub teams: Option<Vec<String>>,
    pub team: Option<String>,
    pub user: Option<String>,
    pub state: Option<String>,
    /// Only ids below this (the cursor of the previous page).
    pub before: Option<u64>,
    /// Only jobs that ended at or after this.
    pub ended_since: Option<u64>,
    /// Only jobs that ended at or before this.
    pub ended_until: Option<u64>,
    pub limit: usize,
}

/// What a restart starts from.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: Option<ClusterState>,
    /// Events after the snapshot, in order, with their sequence numbers.
    pub events: Vec<(u64, Event)>,
    pub payloads: Vec<(u64, JobPayload)>,
    pub tokens: Vec<TokenRecord>,
    pub nodes: Vec<NodeRecord>,
    /// The sequence number of the last event.
    pub last_seq: u64,
    /// Exit codes of tasks, by (job, task, attempt).
    pub exits: Vec<((u64, u32, u32), i32)>,
    /// The sequence number the snapshot (if any) was taken at.
    pub snapshot_seq: u64,
    /// The server's derived data saved with the snapshot.
    pub extra: Option<String>,
}

/// One atomic write: events, the payloads of the jobs they submit, and the records beside
/// them (task exits, tokens, nodes). The server's group commit gathers everything queued
/// while the previous write was being synced into one of these.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub events: &'a [Event],
    pub payloads: &'a [(u64, JobPayload)],
    /// Task exits by (job, task, attempt): a later one for the same key replaces it.
    pub exits: &'a [((u64, u32, u32), i32)],
    pub tokens: &'a [TokenRecord],
    /// Nodes by name (a name keeps its id; an id moves with its name).
    pub nodes: &'a [NodeRecord],
    /// Records of jobs the batch's events forget; their payloads and task exits are deleted,
    /// so that a restart loads only what the state still holds.
    pub ended: &'a [EndedJob],
    /// Samples of the teams' use (a later one for the same time and team replaces it).
    pub usage: &'a [UsageRow],
}

/// A task's log as (job, task, attempt).
pub type LogKey = (u64, u32, u32);

/// One stored chunk of a task's log: its key, its offset in the log, its bytes.
pub type LogChunk = (LogKey, u64, Vec<u8>);

/// Every row a store holds, as stored (events, snapshots and payloads as their JSON text),
/// so that `qm admin migrate` copies a cluster's whole history from one backend to another
/// and can check the copy row for row.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// (seq, event JSON), every event from the first, in order.
    pub events: Vec<(u64, String)>,
    /// (seq, state JSON, the server's extra JSON) of the latest snapshot, if any.
    pub snapshot: Option<(u64, String, String)>,
    pub payloads: Vec<(u64, String)>,
    pub tokens: Vec<TokenRecord>,
    pub nodes: Vec<NodeRecord>,
    pub exits: Vec<((u64, u32, u32), i32)>,
    /// (job, task, attempt), offset, bytes: one chunk per row, in key and offset order.
    pub logs: Vec<LogChunk>,
    pub ended: Vec<EndedJob>,
    pub usage: Vec<UsageRow>,
}

impl Dump {
    pub fn is_empty(&self) -> bool {
        *self == Dump::default()
    }

    /// Rows by kind, for people.
    pub fn summary(&self) -> String {
        let bytes: usize = self.logs.iter().map(|l| l.2.len()).sum();
        format!(
            "{} events, {} snapshot, {} job payloads, {} tokens, {} nodes, {} task exits, {} log chunks ({bytes} bytes), {} ended job records, {} usage samples",
            self.events.len(),
            usize::from(self.snapshot.is_some()),
            self.payloads.len(),
            self.tokens.len(),
            self.nodes.len(),
            self.exits.len(),
            self.logs.len(),
            self.ended.len(),
            self.usage.len()
        )
    }

    /// Sorted where a backend's order is not the table's key, so that two dumps of the same
    /// rows compare equal.
    fn normalise(&mut self) {
        self.payloads.sort();
        self.tokens.sort_by(|a, b| a.hash.cmp(&b.hash));
        self.nodes.sort_by_key(|n| n.id);
        self.exits.sort();
        self.logs.sort_by_key(|l| (l.0, l.1));
        self.ended.sort_by_key(|e| e.id);
        self.usage
            .sort_by(|a, b| (a.at_s, &a.team).cmp(&(b.at_s, &b.team)));
    }
}

/// A part of a store's rows, read and written one at a time so that a migration holds one
/// page in memory, not a cluster's whole history. Pages are cut by row counts, so both
/// backends cut the same rows into the same pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    /// The latest snapshot, tokens, nodes and task exits (small rows, all at once).
    Records,
    /// Up to [`EVENTS_PER_PAGE`] events after this sequence number.
    Events { after: u64 },
    /// Up to [`PAYLOADS_PER_PAGE`] payloads of jobs after this one (`None`: from the first).
    Payloads { after: Option<u64> },
    /// Up to [`ENDED_PER_PAGE`] ended jobs' records after this job.
    Ended { after: Option<u64> },
    /// Up to [`USAGE_PER_PAGE`] usage samples after this (time, team).
    Usage { after: Option<(u64, String)> },
    /// Up to [`LOG_CHUNKS_PER_PAGE`] log chunks after this (task, offset).
    Logs { after: Option<(LogKey, u64)> },
}

pub const EVENTS_PER_PAGE: usize = 5_000;
/// A payload may be half a MiB (command and environment): at most about 128 MiB a page.
pub const PAYLOADS_PER_PAGE: usize = 256;
/// A chunk is at most 1 MiB.
pub const LOG_CHUNKS_PER_PAGE: usize = 16;
/// A record is a few KiB (its command and events).
pub const ENDED_PER_PAGE: usize = 1_000;
/// A usage sample is a few dozen bytes.
pub const USAGE_PER_PAGE: usize = 10_000;

impl Page {
    /// The page after this one, which held `rows`; `None` after the last.
    pub fn next(&self, rows: &Dump) -> Option<Page> {
        match self {
            Page::Records => Some(Page::Events { after: 0 }),
            Page::Events { .. } => Some(match rows.events.last() {
                Some(&(seq, _)) if rows.events.len() == EVENTS_PER_PAGE => {
                    Page::Events { after: seq }
                }
                _ => Page::Payloads { after: None },
            }),
            Page::Payloads { .. } => Some(match rows.payloads.last() {
                Some(&(job, _)) if rows.payloads.len() == PAYLOADS_PER_PAGE => {
                    Page::Payloads { after: Some(job) }
                }
                _ => Page::Ended { after: None },
            }),
            Page::Ended { .. } => Some(match rows.ended.last() {
                Some(e) if rows.ended.len() == ENDED_PER_PAGE => Page::Ended { after: Some(e.id) },
                _ => Page::Usage { after: None },
            }),
            Page::Usage { .. } => Some(match rows.usage.last() {
                Some(u) if rows.usage.len() == USAGE_PER_PAGE => Page::Usage {
                    after: Some((u.at_s, u.team.clone())),
                },
                _ => Page::Logs { after: None },
            }),
            Page::Logs { .. } => match rows.logs.last() {
                Some(&(key, at, _)) if rows.logs.len() == LOG_CHUNKS_PER_PAGE => Some(Page::Logs {
                    after: Some((key, at)),
                }),
                _ => None,
            },
        }
    }

    /// The log-chunk cursor as SQL parameters (before the first: all -1).
    fn log_after(after: &Option<(LogKey, u64)>) -> (i64, i64, i64, i64) {
        match after {
            Some(((job, task, attempt), at)) => (
                *job as i64,
                i64::from(*task),
                i64::from(*attempt),
                *at as i64,
            ),
            None => (-1, -1, -1, -1),
        }
    }
}

/// What a migration copied: rows by kind, and the bytes of task output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub events: usize,
    pub snapshots: usize,
    pub payloads: usize,
    pub tokens: usize,
    pub nodes: usize,
    pub exits: usize,
    pub log_chunks: usize,
    pub log_bytes: usize,
    pub ended: usize,
    pub usage: usize,
    /// Pages written (each one transaction, checked on its own).
    pub pages: usize,
}

impl Copied {
    fn tally(&mut self, page: &Dump) {
        self.events += page.events.len();
        self.snapshots += usize::from(page.snapshot.is_some());
        self.payloads += page.payloads.len();
        self.tokens += page.tokens.len();
        self.nodes += page.nodes.len();
        self.exits += page.exits.len();
        self.log_chunks += page.logs.len();
        self.log_bytes += page.logs.iter().map(|l| l.2.len()).sum::<usize>();
        self.ended += page.ended.len();
        self.usage += page.usage.len();
        self.pages += 1;
    }

    /// Rows by kind, for people.
    pub fn summary(&self) -> String {
        format!(
            "{} events, {} snapshot, {} job payloads, {} tokens, {} nodes, {} task exits, {} log chunks ({} bytes), {} ended job records, {} usage samples, in {} pages",
            self.events,
            self.snapshots,
            self.payloads,
            self.tokens,
            self.nodes,
            self.exits,
            self.log_chunks,
            self.log_bytes,
            self.ended,
            self.usage,
            self.pages
        )
    }
}

/// Copies every row of `from` into `to`, which must be empty, a page at a time: each page is
/// written in one transaction, read back from `to` and compared with the source's, so at most
/// one page is held in memory. Returns how many rows of each kind were copied. A migration
/// that fails part way leaves `to` part filled: make a new, empty database and run it again.
pub fn migrate(from: &mut dyn Store, to: &mut dyn Store) -> Result<Copied, StoreError> {
    let mut page = Some(Page::Records);
    while let Some(p) = page {
        if !to.export_page(&p)?.is_empty() {
            return Err(StoreError(
                "the target database is not empty; migrate into a new, empty database".into(),
            ));
        }
        page = p.next(&Dump::default());
    }
    let mut copied = Copied::default();
    let mut page = Some(Page::Records);
    while let Some(p) = page {
        let mut rows = from.export_page(&p)?;
        rows.normalise();
        to.import(&rows)?;
        let mut copy = to.export_page(&p)?;
        copy.normalise();
        if copy != rows {
            return Err(StoreError(format!(
                "the copy differs from the source at {p:?}: source {}, copy {}",
                rows.summary(),
                copy.summary()
            )));
        }
        page = p.next(&rows);
        copied.tally(&rows);
    }
    Ok(copied)
}

/// How to reach a PostgreSQL database beyond its URL.
#[derive(Clone, Debug, Default)]
pub struct DbAccess {
    /// For a URL that carries none.
    pub password: Option<String>,
    /// The private CA that signed the database's certificate (`sslmode=require`).
    pub ca: Option<std::path::PathBuf>,
}

/// Opens the store a `--db` value names: `sqlite:PATH` or `postgres://USER@HOST[:PORT]/DB`
/// (`postgresql://` too; `?sslmode=require` for TLS).
pub fn open(db: &str, access: &DbAccess) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = db.strip_prefix("sqlite:") {
        return Ok(Box::new(SqliteStore::open(Path::new(path))?));
    }
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let target = PgTarget {
            url: db.to_string(),
            password: access.password.clone(),
            ca: access.ca.clone(),
        };
        return Ok(Box::new(PgStore::connect(&target)?));
    }
    Err(StoreError(format!(
        "unsupported database {db:?}; expected sqlite:PATH (e.g. sqlite:/var/lib/qm/qm.db) or postgres://USER@HOST[:PORT]/DATABASE"
    )))
}

/// The server's persistence.
pub trait Store: Send {
    /// Everything needed to rebuild the server's state.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Appends a batch durably, all of it or nothing; returns the sequence number of its
    /// last event (0 when it has none).
    fn append(&mut self, batch: Batch<'_>) -> Result<u64, StoreError>;
    /// Saves the state as of event `seq`, with the server's own derived data (`extra`, JSON);
    /// later loads replay only what follows.
    fn snapshot(&mut self, seq: u64, state: &ClusterState, extra: &str) -> Result<(), StoreError>;
    fn put_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.append(Batch {
            tokens: std::slice::from_ref(token),
            ..Batch::default()
        })
        .map(drop)
    }
    fn put_node(&mut self, node: &NodeRecord) -> Result<(), StoreError> {
        self.append(Batch {
            nodes: std::slice::from_ref(node),
            ..Batch::default()
        })
        .map(drop)
    }
    /// Records that one task of a run exited (a gang's run ends when all its tasks have).
    fn put_exit(&mut self, key: (u64, u32, u32), code: i32) -> Result<(), StoreError> {
        self.append(Batch {
            exits: &[(key, code)],
            ..Batch::default()
        })
        .map(drop)
    }
    /// Appends task output at `offset` (ignoring bytes already stored); returns the log's
    /// length.
    fn append_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError>;
    /// Bytes stored for a task's log.
    fn log_len(&mut self, key: (u64, u32, u32)) -> Result<u64, StoreError>;
    /// Up to `max` bytes of a task's log from `offset`.
    fn read_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError>;
    /// Every row, as stored.
    fn export(&mut self) -> Result<Dump, StoreError> {
        let mut all = Dump::default();
        let mut page = Some(Page::Records);
        while let Some(p) = page {
            let rows = self.export_page(&p)?;
            page = p.next(&rows);
            all.events.extend(rows.events);
            all.snapshot = all.snapshot.take().or(rows.snapshot);
            all.payloads.extend(rows.payloads);
            all.tokens.extend(rows.tokens);
            all.nodes.extend(rows.nodes);
            all.exits.extend(rows.exits);
            all.logs.extend(rows.logs);
            all.ended.extend(rows.ended);
            all.usage.extend(rows.usage);
        }
        Ok(all)
    }
    /// The record of an ended job the server forgot.
    fn ended_job(&mut self, id: u64) -> Result<Option<EndedJob>, StoreError>;
    /// Records of ended jobs the server forgot, newest first.
    fn ended_jobs(&mut self, q: &EndedQuery) -> Result<Vec<EndedJob>, StoreError>;
    /// The teams' usage samples taken from `since_s` to `until_s`, in time order.
    fn usage(&mut self, since_s: u64, until_s: u64) -> Result<Vec<UsageRow>, StoreError>;
    /// Deletes the task output of forgotten jobs that ended before `before_s`; returns how
    /// many chunks went.
    fn prune_logs(&mut self, before_s: u64) -> Result<u64, StoreError>;
    /// Deletes the usage samples taken before `before_s`; how many.
    fn prune_usage(&mut self, before_s: u64) -> Result<u64, StoreError>;
    /// One page of rows, as stored (see [`Page`]), in key order.
    fn export_page(&mut self, page: &Page) -> Result<Dump, StoreError>;
    /// The servers sharing this store: who leads and who stands by (`None`: a store only
    /// one server uses, such as a SQLite file).
    fn servers(&mut self) -> Result<Option<pg::Servers>, StoreError> {
        Ok(None)
    }
    /// Writes every row of `dump` in one transaction (into an empty store).
    fn import(&mut self, dump: &Dump) -> Result<(), StoreError>;
}

/// Bytes stored for a task's log.
fn log_len(db: &rusqlite::Connection, key: (u64, u32, u32)) -> Result<u64, StoreError> {
    Ok(db.query_row(
        "SELECT COALESCE(MAX(offset + length(data)), 0) FROM log_chunks WHERE job = ?1 AND task = ?2 AND attempt = ?3",
        rusqlite::params![key.0 as i64, key.1, key.2],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Inserts an `ended_jobs` row with a statement that takes its seven columns in order.
fn put_ended(stmt: &mut rusqlite::Statement<'_>, e: &EndedJob) -> rusqlite::Result<usize> {
    stmt.execute(rusqlite::params![
        e.id as i64,
        e.team,
        e.user,
        e.state,
        e.submit_s as i64,
        e.end_s as i64,
        e.view
    ])
}

/// An `ended_jobs` row (id, team, username, state, submit_s, end_s, view).
fn ended_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndedJob> {
    Ok(EndedJob {
        id: r.get::<_, i64>(0)? as u64,
        team: r.get(1)?,
        user: r.get(2)?,
        state: r.get(3)?,
        submit_s: r.get::<_, i64>(4)? as u64,
        end_s: r.get::<_, i64>(5)? as u64,
        view: r.get(6)?,
    })
}

/// A parameter of a query both backends build the same way.
pub(crate) enum SqlParam {
    Int(i64),
    Text(String),
}

/// The query for [`Store::ended_jobs`], with placeholders as `mark` writes them (`?1`, `$1`)
/// and the caller's teams as one JSON array parameter, which `each` turns into a table of
/// `value`s (SQLite's `json_each`, PostgreSQL's `json_array_elements_text`).
pub(crate) fn ended_sql(
    q: &EndedQuery,
    mark: impl Fn(usize) -> String,
    each: impl Fn(&str) -> String,
) -> (String, Vec<SqlParam>) {
    let mut sql = String::from(
        "SELECT id, team, username, state, submit_s, end_s, view FROM ended_jobs WHERE id < ",
    );
    let mut params = vec![SqlParam::Int(q.before.map_or(i64::MAX, |b| b as i64))];
    sql += &mark(1);
    for (column, value) in [
        ("team", &q.team),
        ("username", &q.user),
        ("state", &q.state),
    ] {
        if let Some(v) = value {
            params.push(SqlParam::Text(v.clone()));
            sql += &format!(" AND {column} = {}", mark(params.len()));
        }
    }
    if let Some(since) = q.ended_since {
        params.push(SqlParam::Int(since.min(i64::MAX as u64) as i64));
        sql += &format!(" AND end_s >= {}", mark(params.len()));
    }
    if let Some(until) = q.ended_until {
        params.push(SqlParam::Int(until.min(i64::MAX as u64) as i64));
        sql += &format!(" AND end_s <= {}", mark(params.len()));
    }
    if let Some(teams) = &q.teams {
        params.push(SqlParam::Text(
            serde_json::to_string(teams).unwrap_or_else(|_| "[]".into()),
        ));
        sql += &format!(
            " AND team IN (SELECT value FROM {})",
            each(&mark(params.len()))
        );
    }
    params.push(SqlParam::Int(q.limit as i64));
    sql += &format!(" ORDER BY id DESC LIMIT {}", mark(params.len()));
    (sql, params)
}

/// The embedded store: one SQLite file in WAL mode with full sync.
pub struct SqliteStore {
    db: rusqlite::Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (seq INTEGER PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_extra (seq INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payloads (job INTEGER PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, teams TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, credential_hash TEXT NOT NULL, address TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS task_exits (job INTEGER NOT NULL, task INTEGER NOT NULL, attempt INTEGER NOT NULL, code INTEGER NOT NULL, PRIMARY KEY (job, task, attempt));
CREATE TABLE IF NOT EXISTS log_chunks (job INTEGER NOT NULL, task INTEGER NOT NULL, attempt INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job, task, attempt, offset));
CREATE TABLE IF NOT EXISTS ended_jobs (id INTEGER PRIMARY KEY, team TEXT NOT NULL, username TEXT NOT NULL, state TEXT NOT NULL, submit_s INTEGER NOT NULL, end_s INTEGER NOT NULL, view TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ended_jobs_team ON ended_jobs (team, id);
CREATE INDEX IF NOT EXISTS ended_jobs_user ON ended_jobs (username, id);
CREATE TABLE IF NOT EXISTS usage (at_s INTEGER NOT NULL, team TEXT NOT NULL, guaranteed_milli INTEGER NOT NULL, used_milli INTEGER NOT NULL, borrowed_milli INTEGER NOT NULL, lent_milli INTEGER NOT NULL, idle_milli INTEGER NOT NULL, PRIMARY KEY (at_s, team));
";

/// Inserts a `usage` row with a statement that takes its seven columns in order.
fn put_usage(stmt: &mut rusqlite::Statement<'_>, u: &UsageRow) -> rusqlite::Result<usize> {
    stmt.execute(rusqlite::params![
        u.at_s as i64,
        u.team,
        u.guaranteed_milli as i64,
        u.used_milli as i64,
        u.borrowed_milli as i64,
        u.lent_milli as i64,
        u.idle_milli as i64
    ])
}

/// A `usage` row (at_s, team, guaranteed, used, borrowed, lent, idle).
fn usage_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRow> {
    Ok(UsageRow {
        at_s: r.get::<_, i64>(0)? as u64,
        team: r.get(1)?,
        guaranteed_milli: r.get::<_, i64>(2)? as u64,
        used_milli: r.get::<_, i64>(3)? as u64,
        borrowed_milli: r.get::<_, i64>(4)? as u64,
        lent_milli: r.get::<_, i64>(5)? as u64,
        idle_milli: r.get::<_, i64>(6)? as u64,
    })
}

const USAGE_COLUMNS: &str =
    "at_s, team, guaranteed_milli, used_milli, borrowed_milli, lent_milli, idle_milli";

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let db = rusqlite::Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(SqliteStore { db })
    }

    /// An in-memory database, for tests.
    pub fn memory() -> Result<SqliteStore, StoreError> {
        let db = rusqlite::Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(SqliteStore { db })
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        let snap: Option<(u64, String)> = self
            .db
            .query_row(
                "SELECT seq, state FROM snapshots ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?;
        let from = match snap {
            Some((seq, text)) => {
                out.state = Some(serde_json::from_str(&text)?);
                out.extra = self
                    .db
                    .query_row(
                        "SELECT data FROM snapshot_extra WHERE seq = ?1",
                        [seq as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                seq
            }
            None => 0,
        };
        out.snapshot_seq = from;
        let mut stmt = self
            .db
            .prepare("SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq")?;
        let rows = stmt.query_map([from as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (seq, text) = row?;
            out.events.push((seq, serde_json::from_str(&text)?));
        }
        out.last_seq = self
            .db
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })? as u64;
        let mut stmt = self.db.prepare("SELECT job, payload FROM payloads")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (job, text) = row?;
            out.payloads.push((job, serde_json::from_str(&text)?));
        }
        let mut stmt = self
            .db
            .prepare("SELECT hash, name, role, teams FROM tokens")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (hash, name, role, teams) = row?;
            // A role this build does not know is a store it cannot trust.
            let role = role
                .parse()
                .map_err(|e| StoreError(format!("token {name:?}: {e}")))?;
            out.tokens.push(TokenRecord {
                hash,
                name,
                role,
                teams: serde_json::from_str(&teams)?,
            });
        }
        let mut stmt = self
            .db
            .prepare("SELECT job, task, attempt, code FROM task_exits")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                ),
                r.get::<_, i32>(3)?,
            ))
        })?;
        for row in rows {
            out.exits.push(row?);
        }
        let mut stmt = self
            .db
            .prepare("SELECT name, id, credential_hash, address FROM nodes ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(NodeRecord {
                name: r.get(0)?,
                id: r.get::<_, i64>(1)? as u32,
                credential_hash: r.get(2)?,
                address: r.get(3)?,
            })
        })?;
        for row in rows {
            out.nodes.push(row?);
        }
        Ok(out)
    }

    fn append(&mut self, batch: Batch<'_>) -> Result<u64, StoreError> {
        let tx = self.db.transaction()?;
        let mut last = 0;
        {
            let mut ins = tx.prepare_cached("INSERT INTO events (event) VALUES (?1)")?;
            for e in batch.events {
                ins.execute([serde_json::to_string(e)?])?;
                last = tx.last_insert_rowid() as u64;
            }
            let mut pay = tx
                .prepare_cached("INSERT OR REPLACE INTO payloads (job, payload) VALUES (?1, ?2)")?;
            for (job, p) in batch.payloads {
                pay.execute(rusqlite::params![*job as i64, serde_json::to_string(p)?])?;
            }
            let mut exit = tx.prepare_cached(
                "INSERT OR REPLACE INTO task_exits (job, task, attempt, code) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for ((job, task, attempt), code) in batch.exits {
                exit.execute(rusqlite::params![*job as i64, task, attempt, code])?;
            }
            let mut token = tx.prepare_cached(
                "INSERT OR REPLACE INTO tokens (hash, name, role, teams) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for t in batch.tokens {
                token.execute(rusqlite::params![
                    t.hash,
                    t.name,
                    t.role.as_str(),
                    serde_json::to_string(&t.teams)?
                ])?;
            }
            let mut node = tx.prepare_cached(
                "INSERT OR REPLACE INTO nodes (name, id, credential_hash, address) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for n in batch.nodes {
                node.execute(rusqlite::params![
                    n.name,
                    i64::from(n.id),
                    n.credential_hash,
                    n.address
                ])?;
            }
            let mut ended = tx.prepare_cached(
                "INSERT OR REPLACE INTO ended_jobs (id, team, username, state, submit_s, end_s, view) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut unpay = tx.prepare_cached("DELETE FROM payloads WHERE job = ?1")?;
            let mut unexit = tx.prepare_cached("DELETE FROM task_exits WHERE job = ?1")?;
            for e in batch.ended {
                put_ended(&mut ended, e)?;
                unpay.execute([e.id as i64])?;
                unexit.execute([e.id as i64])?;
            }
            let mut usage = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO usage ({USAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?;
            for u in batch.usage {
                put_usage(&mut usage, u)?;
            }
        }
        tx.commit()?;
        Ok(last)
    }

    fn usage(&mut self, since_s: u64, until_s: u64) -> Result<Vec<UsageRow>, StoreError> {
        let mut stmt = self.db.prepare_cached(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage WHERE at_s >= ?1 AND at_s <= ?2 ORDER BY at_s, team"
        ))?;
        let rows = stmt.query_map(
            rusqlite::params![
                since_s.min(i64::MAX as u64) as i64,
                until_s.min(i64::MAX as u64) as i64
            ],
            usage_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn snapshot(&mut self, seq: u64, state: &ClusterState, extra: &str) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, state) VALUES (?1, ?2)",
            rusqlite::params![seq as i64, serde_json::to_string(state)?],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshot_extra (seq, data) VALUES (?1, ?2)",
            rusqlite::params![seq as i64, extra],
        )?;
        tx.execute("DELETE FROM snapshots WHERE seq < ?1", [seq as i64])?;
        tx.execute("DELETE FROM snapshot_extra WHERE seq < ?1", [seq as i64])?;
        tx.commit()?;
        Ok(())
    }

    fn append_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        // Output is stored as chunks, one row per upload, never rewritten.
        let tx = self.db.transaction()?;
        let len = log_len(&tx, key)?;
        if offset > len {
            return Err(StoreError(format!(
                "log chunk at offset {offset} leaves a gap after {len} bytes"
            )));
        }
        let skip = (len - offset) as usize;
        let mut end = len;
        if skip < data.len() {
            tx.execute(
                "INSERT INTO log_chunks (job, task, attempt, offset, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![key.0 as i64, key.1, key.2, len as i64, &data[skip..]],
            )?;
            end = len + (data.len() - skip) as u64;
        }
        tx.commit()?;
        Ok(end)
    }

    fn log_len(&mut self, key: (u64, u32, u32)) -> Result<u64, StoreError> {
        log_len(&self.db, key)
    }

    fn read_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        let len = log_len(&self.db, key)?;
        let start = offset.min(len);
        let mut out = Vec::new();
        let mut stmt = self.db.prepare_cached(
            "SELECT offset, data FROM log_chunks WHERE job = ?1 AND task = ?2 AND attempt = ?3 \
             AND offset + length(data) > ?4 ORDER BY offset",
        )?;
        let rows = stmt.query_map(
            rusqlite::params![key.0 as i64, key.1, key.2, start as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )?;
        for row in rows {
            let (at, data) = row?;
            let from = start.saturating_sub(at) as usize;
            let room = max - out.len();
            let take = (data.len() - from).min(room);
            out.extend_from_slice(&data[from..from + take]);
            if out.len() >= max {
                break;
            }
        }
        let next = start + out.len() as u64;
        Ok((out, next))
    }

    fn ended_job(&mut self, id: u64) -> Result<Option<EndedJob>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT id, team, username, state, submit_s, end_s, view FROM ended_jobs WHERE id = ?1",
                [id as i64],
                ended_row,
            )
            .optional()?)
    }

    fn prune_logs(&mut self, before_s: u64) -> Result<u64, StoreError> {
        Ok(self.db.execute(
            "DELETE FROM log_chunks WHERE job IN (SELECT id FROM ended_jobs WHERE end_s < ?1)",
            [before_s as i64],
        )? as u64)
    }

    fn prune_usage(&mut self, before_s: u64) -> Result<u64, StoreError> {
        Ok(self.db.execute(
            "DELETE FROM usage WHERE at_s < ?1",
            [before_s.min(i64::MAX as u64) as i64],
        )? as u64)
    }

    fn ended_jobs(&mut self, q: &EndedQuery) -> Result<Vec<EndedJob>, StoreError> {
        let (sql, params) = ended_sql(q, |i| format!("?{i}"), |p| format!("json_each({p})"));
        let mut stmt = self.db.prepare(&sql)?;
        let params: Vec<&dyn rusqlite::ToSql> = params
            .iter()
            .map(|p| match p {
                SqlParam::Int(i) => i as &dyn rusqlite::ToSql,
                SqlParam::Text(t) => t as &dyn rusqlite::ToSql,
            })
            .collect();
        let rows = stmt.query_map(params.as_slice(), ended_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn export_page(&mut self, page: &Page) -> Result<Dump, StoreError> {
        let mut out = Dump::default();
        match page {
            Page::Records => {
                let loaded = self.load()?;
                out.tokens = loaded.tokens;
                out.nodes = loaded.nodes;
                out.exits = loaded.exits;
                out.snapshot = self
                    .db
                    .query_row(
                        "SELECT s.seq, s.state, COALESCE(x.data, '') FROM snapshots s \
                         LEFT JOIN snapshot_extra x ON x.seq = s.seq ORDER BY s.seq DESC LIMIT 1",
                        [],
                        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
            }
            Page::Events { after } => {
                let mut stmt = self.db.prepare(
                    "SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(
                    rusqlite::params![*after as i64, EVENTS_PER_PAGE as i64],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
                )?;
                for row in rows {
                    out.events.push(row?);
                }
            }
            Page::Payloads { after } => {
                let mut stmt = self.db.prepare(
                    "SELECT job, payload FROM payloads WHERE job > ?1 ORDER BY job LIMIT ?2",
                )?;
                let after = after.map_or(-1, |j| j as i64);
                let rows = stmt
                    .query_map(rusqlite::params![after, PAYLOADS_PER_PAGE as i64], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
                    })?;
                for row in rows {
                    out.payloads.push(row?);
                }
            }
            Page::Ended { after } => {
                let mut stmt = self.db.prepare(
                    "SELECT id, team, username, state, submit_s, end_s, view FROM ended_jobs WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let after = after.map_or(-1, |j| j as i64);
                let rows =
                    stmt.query_map(rusqlite::params![after, ENDED_PER_PAGE as i64], ended_row)?;
                for row in rows {
                    out.ended.push(row?);
                }
            }
            Page::Usage { after } => {
                let mut stmt = self.db.prepare(&format!(
                    "SELECT {USAGE_COLUMNS} FROM usage WHERE (at_s, team) > (?1, ?2) ORDER BY at_s, team LIMIT ?3"
                ))?;
                let (at, team) = after
                    .clone()
                    .map_or((-1, String::new()), |(a, t)| (a as i64, t));
                let rows = stmt.query_map(
                    rusqlite::params![at, team, USAGE_PER_PAGE as i64],
                    usage_row,
                )?;
                for row in rows {
                    out.usage.push(row?);
                }
            }
            Page::Logs { after } => {
                let (job, task, attempt, at) = Page::log_after(after);
                let mut stmt = self.db.prepare(
                    "SELECT job, task, attempt, offset, data FROM log_chunks \
                     WHERE (job, task, attempt, offset) > (?1, ?2, ?3, ?4) \
                     ORDER BY job, task, attempt, offset LIMIT ?5",
                )?;
                let rows = stmt.query_map(
                    rusqlite::params![job, task, attempt, at, LOG_CHUNKS_PER_PAGE as i64],
                    |r| {
                        Ok((
                            (r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?),
                            r.get::<_, i64>(3)? as u64,
                            r.get(4)?,
                        ))
                    },
                )?;
                for row in rows {
                    out.logs.push(row?);
                }
            }
        }
        Ok(out)
    }

    fn import(&mut self, dump: &Dump) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        {
            let mut ins = tx.prepare("INSERT INTO events (seq, event) VALUES (?1, ?2)")?;
            for (seq, e) in &dump.events {
                ins.execute(rusqlite::params![*seq as i64, e])?;
            }
            if let Some((seq, state, extra)) = &dump.snapshot {
                tx.execute(
                    "INSERT INTO snapshots (seq, state) VALUES (?1, ?2)",
                    rusqlite::params![*seq as i64, state],
                )?;
                tx.execute(
                    "INSERT INTO snapshot_extra (seq, data) VALUES (?1, ?2)",
                    rusqlite::params![*seq as i64, extra],
                )?;
            }
            let mut ins = tx.prepare("INSERT INTO payloads (job, payload) VALUES (?1, ?2)")?;
            for (job, p) in &dump.payloads {
                ins.execute(rusqlite::params![*job as i64, p])?;
            }
            let mut ins =
                tx.prepare("INSERT INTO tokens (hash, name, role, teams) VALUES (?1, ?2, ?3, ?4)")?;
            for t in &dump.tokens {
                ins.execute(rusqlite::params![
                    t.hash,
                    t.name,
                    t.role.as_str(),
                    serde_json::to_string(&t.teams)?
                ])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO nodes (name, id, credential_hash, address) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for n in &dump.nodes {
                ins.execute(rusqlite::params![
                    n.name,
                    i64::from(n.id),
                    n.credential_hash,
                    n.address
                ])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO task_exits (job, task, attempt, code) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for ((job, task, attempt), code) in &dump.exits {
                ins.execute(rusqlite::params![*job as i64, task, attempt, code])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO log_chunks (job, task, attempt, offset, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for ((job, task, attempt), at, data) in &dump.logs {
                ins.execute(rusqlite::params![
                    *job as i64,
                    task,
                    attempt,
                    *at as i64,
                    data
                ])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO ended_jobs (id, team, username, state, submit_s, end_s, view) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in &dump.ended {
                put_ended(&mut ins, e)?;
            }
            let mut ins = tx.prepare(&format!(
                "INSERT INTO usage ({USAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?;
            for u in &dump.usage {
                put_usage(&mut ins, u)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_core::{apply, SchedulerConfig, TeamSpec};
    use std::str::FromStr;

    use pg::test_database as test_pg;

    /// The same checks on every backend: `reopen` opens the same database again.
    fn survives_reopening(reopen: &dyn Fn() -> Box<dyn Store>) {
        let team = Event::SetTeam(TeamSpec::new("a", 8));
        {
            let mut s = reopen();
            let seq = s
                .append(Batch {
                    events: std::slice::from_ref(&team),
                    payloads: &[(1, JobPayload::default())],
                    ..Batch::default()
                })
                .unwrap();
            assert_eq!(seq, 1);
            let mut state = ClusterState::new(SchedulerConfig::default());
            apply(&mut state, team.clone()).unwrap();
            s.snapshot(seq, &state, "{}").unwrap();
            s.append(Batch {
                events: &[Event::SetTeam(TeamSpec::new("b", 8))],
                payloads: &[],
                ..Batch::default()
            })
            .unwrap();
            assert_eq!(s.append_log((1, 0, 1), 0, b"hello ").unwrap(), 6);
            assert_eq!(s.append_log((1, 0, 1), 3, b"lo world").unwrap(), 11);
            assert!(
                s.append_log((1, 0, 1), 20, b"x").is_err(),
                "a gap is refused"
            );
            s.put_token(&TokenRecord {
                hash: "h".into(),
                name: "alice".into(),
                role: qm_proto::Role::Member,
                teams: vec!["a".into()],
            })
            .unwrap();
            s.put_node(&NodeRecord {
                name: "n0".into(),
                id: 0,
                credential_hash: "c0".into(),
                address: "10.0.0.1".into(),
            })
            .unwrap();
            // The same name again: its record is replaced, not doubled.
            s.put_node(&NodeRecord {
                name: "n0".into(),
                id: 0,
                credential_hash: "c1".into(),
                address: "10.0.0.1".into(),
            })
            .unwrap();
            s.put_exit((1, 0, 1), 3).unwrap();
            s.put_exit((1, 0, 1), 4).unwrap();
        }
        let mut s = reopen();
        let loaded = s.load().unwrap();
        assert!(loaded.state.unwrap().team("a").is_some());
        assert_eq!(loaded.events.len(), 1, "only what follows the snapshot");
        assert_eq!(loaded.snapshot_seq, 1);
        assert_eq!(loaded.extra.as_deref(), Some("{}"));
        assert_eq!(loaded.last_seq, 2);
        assert_eq!(loaded.payloads.len(), 1);
        assert_eq!(loaded.tokens.len(), 1);
        assert_eq!(loaded.tokens[0].role, qm_proto::Role::Member);
        assert_eq!(loaded.nodes.len(), 1);
        assert_eq!(loaded.nodes[0].credential_hash, "c1");
        assert_eq!(loaded.exits, vec![((1, 0, 1), 4)]);
        let (bytes, next) = s.read_log((1, 0, 1), 2, 5).unwrap();
        assert_eq!(
            (bytes.as_slice(), next),
            (&b"llo w"[..], 7),
            "across chunks, at most max"
        );
        let (bytes, next) = s.read_log((1, 0, 1), u64::MAX, 0).unwrap();
        assert_eq!((bytes.len(), next), (0, 11), "the length, for a tail");
        let (bytes, next) = s.read_log((1, 0, 1), 6, 100).unwrap();
        assert_eq!((bytes.as_slice(), next), (&b"world"[..], 11));
        assert_eq!(s.log_len((1, 0, 1)).unwrap(), 11);
        assert_eq!(s.log_len((1, 0, 2)).unwrap(), 0);
        // Appends go on after the last event loaded.
        let seq = s
            .append(Batch {
                events: &[Event::SetTeam(TeamSpec::new("c", 8))],
                payloads: &[],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(seq, 3);
        // Forgetting job 1 stores its record and deletes its payload and exits, together.
        let rec = |id: u64, team: &str, user: &str, state: &str| EndedJob {
            id,
            team: team.into(),
            user: user.into(),
            state: state.into(),
            submit_s: 100 + id,
            end_s: 200 + id,
            view: format!("{{\"id\":{id}}}"),
        };
        let ended = vec![
            rec(1, "a", "alice", "succeeded"),
            rec(2, "b", "bob", "failed"),
            rec(3, "a", "bob", "cancelled"),
            rec(4, "a", "alice", "failed"),
        ];
        s.append(Batch {
            ended: &ended,
            ..Batch::default()
        })
        .unwrap();
        drop(s);
        let mut s = reopen();
        let loaded = s.load().unwrap();
        assert!(loaded.payloads.is_empty() && loaded.exits.is_empty());
        assert_eq!(s.ended_job(3).unwrap(), Some(ended[2].clone()));
        assert_eq!(s.ended_job(5).unwrap(), None);
        let ids = |s: &mut Box<dyn Store>, q: EndedQuery| -> Vec<u64> {
            s.ended_jobs(&q).unwrap().iter().map(|e| e.id).collect()
        };
        let all = EndedQuery {
            limit: 10,
            ..EndedQuery::default()
        };
        assert_eq!(ids(&mut s, all.clone()), vec![4, 3, 2, 1]);
        let q = EndedQuery {
            before: Some(4),
            limit: 2,
            ..all.clone()
        };
        assert_eq!(ids(&mut s, q), vec![3, 2]);
        let q = EndedQuery {
            team: Some("a".into()),
            user: Some("alice".into()),
            ..all.clone()
        };
        assert_eq!(ids(&mut s, q), vec![4, 1]);
        let q = EndedQuery {
            state: Some("failed".into()),
            ..all.clone()
        };
        assert_eq!(ids(&mut s, q), vec![4, 2]);
        let q = EndedQuery {
            teams: Some(vec!["b".into(), "c".into()]),
            ..all.clone()
        };
        assert_eq!(ids(&mut s, q), vec![2]);
        let q = EndedQuery {
            teams: Some(Vec::new()),
            ..all
        };
        assert_eq!(ids(&mut s, q), Vec::<u64>::new());
        // Job 1 ended at 201: its output goes with logs of jobs that ended before 202.
        assert_eq!(s.prune_logs(201).unwrap(), 0);
        assert_eq!(s.log_len((1, 0, 1)).unwrap(), 11);
        assert_eq!(s.prune_logs(202).unwrap(), 2);
        assert_eq!(s.log_len((1, 0, 1)).unwrap(), 0);
    }

    /// Usage samples survive reopening; a later sample of the same time and team replaces
    /// the earlier; a window reads what falls in it, in time order.
    fn usage_samples_are_kept(open: &dyn Fn() -> Box<dyn Store>) {
        let row = |at_s: u64, team: &str, used: u64| UsageRow {
            at_s,
            team: team.into(),
            guaranteed_milli: 4000,
            used_milli: used,
            borrowed_milli: used / 2,
            lent_milli: 1000,
            idle_milli: 0,
        };
        {
            let mut s = open();
            s.append(Batch {
                usage: &[row(300, "b", 1), row(300, "a", 2), row(600, "a", 3)],
                ..Batch::default()
            })
            .unwrap();
            s.append(Batch {
                usage: &[row(600, "a", 5), row(600, "a", 6)],
                ..Batch::default()
            })
            .unwrap();
        }
        let mut s = open();
        assert_eq!(
            s.usage(0, 1000).unwrap(),
            vec![row(300, "a", 2), row(300, "b", 1), row(600, "a", 6)]
        );
        assert_eq!(s.usage(301, 1000).unwrap(), vec![row(600, "a", 6)]);
        assert!(s.usage(700, 1000).unwrap().is_empty());
        // Samples older than the retention go, the rest stay.
        assert_eq!(s.prune_usage(300).unwrap(), 0);
        assert_eq!(s.prune_usage(301).unwrap(), 2);
        assert_eq!(s.usage(0, 1000).unwrap(), vec![row(600, "a", 6)]);
    }

    #[test]
    fn sqlite_usage_samples_are_kept() {
        let dir = std::env::temp_dir().join(format!("qm-store-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("qm.db").display());
        usage_samples_are_kept(&|| open(&url, &DbAccess::default()).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn postgres_usage_samples_are_kept() {
        let url = test_pg();
        usage_samples_are_kept(&|| open(&url, &DbAccess::default()).unwrap());
    }

    #[test]
    fn sqlite_events_snapshots_and_logs_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("qm-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qm.db");
        let url = format!("sqlite:{}", path.display());
        survives_reopening(&|| open(&url, &DbAccess::default()).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn postgres_events_snapshots_and_logs_survive_reopening() {
        let url = test_pg();
        survives_reopening(&|| open(&url, &DbAccess::default()).unwrap());
    }

    #[test]
    fn postgres_refuses_a_schema_newer_than_this_build_and_a_second_writer() {
        let url = test_pg();
        let mut first = open(&url, &DbAccess::default()).unwrap();
        first.load().unwrap();
        // Another server that believes it leads writes the same sequence number: refused.
        let mut second = open(&url, &DbAccess::default()).unwrap();
        second.load().unwrap();
        let batch = || Batch {
            events: &[],
            payloads: &[],
            ..Batch::default()
        };
        first.append(batch()).unwrap();
        let team = [Event::SetTeam(TeamSpec::new("a", 1))];
        first
            .append(Batch {
                events: &team,
                payloads: &[],
                ..Batch::default()
            })
            .unwrap();
        let err = second
            .append(Batch {
                events: &team,
                payloads: &[],
                ..Batch::default()
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("already written by another server"), "{err}");
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        // A database of version 1 (before ended jobs' records) is brought up to date.
        client
            .batch_execute(
                "DROP TABLE ended_jobs; DROP TABLE usage; UPDATE qm_schema SET version = 1",
            )
            .unwrap();
        drop((first, second));
        let mut s = open(&url, &DbAccess::default()).unwrap();
        assert_eq!(s.ended_job(1).unwrap(), None);
        assert!(s.usage(0, u64::MAX).unwrap().is_empty());
        let version: i32 = client
            .query_one("SELECT MAX(version) FROM qm_schema", &[])
            .unwrap()
            .get(0);
        assert_eq!(version, pg::SCHEMA_VERSION);
        drop(s);
        client
            .execute("INSERT INTO qm_schema (version) VALUES (99)", &[])
            .unwrap();
        let err = open(&url, &DbAccess::default()).err().unwrap().to_string();
        assert!(
            err.contains(&format!(
                "schema is version 99, newer than this binary's ({})",
                pg::SCHEMA_VERSION
            )),
            "{err}"
        );
    }

    /// A store with a row of every kind: two events, a snapshot after the first, a payload,
    /// a token, a node, an exit and a log of two chunks.
    fn fill(s: &mut dyn Store) {
        let team = Event::SetTeam(TeamSpec::new("a", 8));
        let seq = s
            .append(Batch {
                events: std::slice::from_ref(&team),
                payloads: &[(1, JobPayload::default())],
                ..Batch::default()
            })
            .unwrap();
        let mut state = ClusterState::new(SchedulerConfig::default());
        apply(&mut state, team).unwrap();
        s.snapshot(seq, &state, "{\"histories\":{}}").unwrap();
        s.append(Batch {
            events: &[Event::SetTeam(TeamSpec::new("b", 4))],
            payloads: &[],
            ..Batch::default()
        })
        .unwrap();
        s.put_token(&TokenRecord {
            hash: "h".into(),
            name: "alice".into(),
            role: qm_proto::Role::Admin,
            teams: vec![],
        })
        .unwrap();
        s.put_node(&NodeRecord {
            name: "n0".into(),
            id: 0,
            credential_hash: "c".into(),
            address: "10.0.0.1".into(),
        })
        .unwrap();
        s.put_exit((1, 0, 1), 0).unwrap();
        s.append_log((1, 0, 1), 0, b"hello \xff").unwrap();
        s.append_log((1, 0, 1), 7, b"world").unwrap();
    }

    #[test]
    fn migrate_copies_every_row_both_ways_and_only_into_an_empty_store() {
        let dir = std::env::temp_dir().join(format!("qm-store-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sqlite = format!("sqlite:{}", dir.join("from.db").display());
        let mut from = open(&sqlite, &DbAccess::default()).unwrap();
        fill(from.as_mut());
        let pg = test_pg();
        let mut to = open(&pg, &DbAccess::default()).unwrap();
        let copied = migrate(from.as_mut(), to.as_mut()).unwrap();
        assert_eq!(copied.events, 2);
        assert_eq!(copied.log_chunks, 2);
        assert!(
            copied.summary().contains("2 events, 1 snapshot"),
            "{}",
            copied.summary()
        );
        // What a restart loads is the same on both.
        let (a, b) = (from.load().unwrap(), to.load().unwrap());
        assert_eq!(a.state, b.state);
        assert_eq!(a.events, b.events);
        assert_eq!((a.last_seq, a.snapshot_seq), (b.last_seq, b.snapshot_seq));
        assert_eq!(a.extra, b.extra);
        assert_eq!(
            to.read_log((1, 0, 1), 0, 100).unwrap().0,
            b"hello \xffworld".to_vec()
        );
        // The copy goes on where the source stopped.
        let seq = to
            .append(Batch {
                events: &[Event::SetTeam(TeamSpec::new("c", 1))],
                payloads: &[],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(seq, 3);
        // Into a store that holds anything: refused, nothing written.
        let err = migrate(from.as_mut(), to.as_mut()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        // And back, from PostgreSQL into a new SQLite file.
        let back = format!("sqlite:{}", dir.join("back.db").display());
        let mut back = open(&back, &DbAccess::default()).unwrap();
        let copied = migrate(to.as_mut(), back.as_mut()).unwrap();
        assert_eq!(copied.events, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A history of several pages of every kind is copied whole, page by page, both ways.
    #[test]
    fn migrate_pages_through_a_history_larger_than_a_page() {
        let mut from = SqliteStore::memory().unwrap();
        let events: Vec<Event> = (0..EVENTS_PER_PAGE * 2 + 7)
            .map(|i| Event::SetTeam(TeamSpec::new(&format!("t{i}"), 1)))
            .collect();
        let payloads: Vec<(u64, JobPayload)> = (1..=(PAYLOADS_PER_PAGE as u64 * 3 + 1))
            .map(|j| {
                (
                    j,
                    JobPayload {
                        command: vec!["echo".into(), j.to_string()],
                        ..JobPayload::default()
                    },
                )
            })
            .collect();
        from.append(Batch {
            events: &events,
            payloads: &payloads,
            ..Batch::default()
        })
        .unwrap();
        let ended: Vec<EndedJob> = (10_000..10_000 + ENDED_PER_PAGE as u64 + 3)
            .map(|id| EndedJob {
                id,
                team: "a".into(),
                user: "alice".into(),
                state: "succeeded".into(),
                submit_s: id,
                end_s: id + 1,
                view: "{}".into(),
            })
            .collect();
        from.append(Batch {
            ended: &ended,
            ..Batch::default()
        })
        .unwrap();
        let usage: Vec<UsageRow> = (0..USAGE_PER_PAGE as u64 + 3)
            .map(|i| UsageRow {
                at_s: 60 * (i / 2),
                team: format!("t{}", i % 2),
                guaranteed_milli: 8000,
                used_milli: i,
                borrowed_milli: i / 2,
                lent_milli: 0,
                idle_milli: 1,
            })
            .collect();
        from.append(Batch {
            usage: &usage,
            ..Batch::default()
        })
        .unwrap();
        for job in 1..=3u64 {
            for i in 0..LOG_CHUNKS_PER_PAGE as u64 {
                from.append_log((job, 0, 1), i * 3, format!("{i:03}").as_bytes())
                    .unwrap();
            }
        }
        let pg = test_pg();
        let mut to = open(&pg, &DbAccess::default()).unwrap();
        let copied = migrate(&mut from, to.as_mut()).unwrap();
        assert_eq!(copied.events, events.len());
        assert_eq!(copied.payloads, payloads.len());
        assert_eq!(copied.log_chunks, 3 * LOG_CHUNKS_PER_PAGE);
        assert_eq!(copied.ended, ended.len());
        assert_eq!(copied.usage, usage.len());
        assert_eq!(to.usage(60, 120).unwrap(), usage[2..6].to_vec());
        assert!(copied.pages > 9, "{}", copied.summary());
        let mut back = SqliteStore::memory().unwrap();
        let again = migrate(to.as_mut(), &mut back).unwrap();
        assert_eq!(again, copied);
        let (mut a, mut b) = (from.export().unwrap(), back.export().unwrap());
        a.normalise();
        b.normalise();
        assert!(a == b, "the round trip changed rows");
        assert_eq!(back.read_log((2, 0, 1), 0, 9).unwrap().0, b"000001002");
    }

    /// One server leads at a time: the lease gives terms, a standby waits for it to lapse,
    /// and a leader whose lease lapsed or was taken cannot write one more row.
    #[test]
    fn postgres_leases_fence_every_write_of_a_former_leader() {
        let url = test_pg();
        let target = PgTarget {
            url: url.clone(),
            ..PgTarget::default()
        };
        let mut a = PgStore::connect(&target).unwrap();
        let mut b = PgStore::connect(&target).unwrap();
        assert_eq!(a.leader().unwrap(), None);
        assert_eq!(a.lead("a", 1.5).unwrap(), Ok(1));
        let standby = b.lead("b", 1.5).unwrap().unwrap_err();
        assert_eq!((standby.term, standby.holder.as_str()), (1, "a"));
        assert!(!standby.lapsed);
        let team = [Event::SetTeam(TeamSpec::new("a", 1))];
        let batch = |events| Batch {
            events,
            payloads: &[],
            ..Batch::default()
        };
        assert_eq!(a.append(batch(&team)).unwrap(), 1);
        a.renew(1.5).unwrap();
        // a stops renewing; once its lease lapses, b takes the next term.
        let term = loop {
            if let Ok(term) = b.lead("b", 30.0).unwrap() {
                break term;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_eq!(term, 2);
        let refused = |r: Result<(), StoreError>| {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("term 1"), "{err}");
        };
        refused(a.append(batch(&team)).map(|_| ()));
        refused(a.put_exit((1, 0, 1), 0));
        refused(a.append_log((1, 0, 1), 0, b"x").map(|_| ()));
        refused(a.snapshot(1, &ClusterState::new(SchedulerConfig::default()), "{}"));
        assert!(a.renew(1.5).is_err());
        // b writes on after what a wrote.
        assert_eq!(b.append(batch(&team)).unwrap(), 2);
        let now = b.leader().unwrap().unwrap();
        assert_eq!((now.term, now.holder.as_str(), now.lapsed), (2, "b", false));
        assert!(now.expires_s > now.since_s);
        // a may lead again only once b's lease lapses: not now.
        assert_eq!(a.lead("a", 1.5).unwrap().unwrap_err().term, 2);
    }

    /// TLS where the URL asks for it, verified against the given CA (`scripts/test` gives
    /// its throwaway server a certificate for localhost and 127.0.0.1, and its path in
    /// QM_TEST_PG_CA); the web roots do not know that CA, and a CA without TLS is a mistake.
    #[test]
    fn postgres_over_tls_verifies_the_server() {
        let ca = std::path::PathBuf::from(std::env::var("QM_TEST_PG_CA").expect(
            "QM_TEST_PG_CA is not set: run the tests with scripts/test, which gives its PostgreSQL a certificate",
        ));
        let url = test_pg();
        let tls = format!("{url}?sslmode=require");
        let with_ca = DbAccess {
            password: None,
            ca: Some(ca.clone()),
        };
        let mut s = open(&tls, &with_ca).unwrap();
        s.append(Batch {
            events: &[Event::SetTeam(TeamSpec::new("a", 1))],
            payloads: &[],
            ..Batch::default()
        })
        .unwrap();
        // The connection really is TLS: the server says so for this session.
        let mut client = postgres::Config::from_str(&tls)
            .unwrap()
            .connect(pg_tls::Rustls::new(Some(&ca)).unwrap())
            .unwrap();
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(ssl);
        let err = open(&tls, &DbAccess::default()).err().unwrap().to_string();
        assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        let err = open(&url, &with_ca).err().unwrap().to_string();
        assert!(err.contains("sslmode=require"), "{err}");
    }

    #[test]
    fn unreachable_and_unknown_databases_are_named() {
        let err = open("postgres://nobody@127.0.0.1:1/none", &DbAccess::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
        let err = open("mysql://x", &DbAccess::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("expected sqlite:PATH"), "{err}");
    }
}
