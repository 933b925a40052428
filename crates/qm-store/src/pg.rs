//! The PostgreSQL backend, [`PgStore`]: the same tables as SQLite's, for a cluster that
//! outgrows one machine.
//!
//! The client is the synchronous `postgres` crate (rustls for TLS, `pg_tls.rs`; no C library), which runs
//! its own small runtime per connection. The server calls its store from async handlers, where
//! blocking on another runtime is not allowed, so the connection lives on a thread of its own
//! and each call is sent there and waited for: the caller blocks exactly as it does on
//! SQLite's fsync, and the store is still one writer in order.
//!
//! Event sequence numbers are the store's, not the database's: each batch inserts the numbers
//! after the last one this store knows, so a second writer that believes it leads collides
//! on the primary key and its batch is refused whole.

use std::sync::mpsc;
use std::thread;

use postgres::{Client, NoTls};
use qm_core::ClusterState;

use crate::{
    ended_sql, Batch, Dump, EndedJob, EndedQuery, JobPayload, Loaded, NodeRecord, Page, SqlParam,
    Store, StoreError, TokenRecord, UsageRow, ENDED_PER_PAGE, EVENTS_PER_PAGE, LOG_CHUNKS_PER_PAGE,
    PAYLOADS_PER_PAGE, USAGE_PER_PAGE,
};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS qm_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq BIGINT PRIMARY KEY, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (seq BIGINT PRIMARY KEY, state TEXT NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payloads (job BIGINT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, teams TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, id BIGINT NOT NULL UNIQUE, credential_hash TEXT NOT NULL, address TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS task_exits (job BIGINT NOT NULL, task INTEGER NOT NULL, attempt INTEGER NOT NULL, code INTEGER NOT NULL, PRIMARY KEY (job, task, attempt));
CREATE TABLE IF NOT EXISTS log_chunks (job BIGINT NOT NULL, task INTEGER NOT NULL, attempt INTEGER NOT NULL, at BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (job, task, attempt, at));
CREATE TABLE IF NOT EXISTS qm_leader (id INTEGER PRIMARY KEY CHECK (id = 1), term BIGINT NOT NULL, holder TEXT NOT NULL, since TIMESTAMPTZ NOT NULL, expires TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS qm_servers (holder TEXT PRIMARY KEY, seen TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS ended_jobs (id BIGINT PRIMARY KEY, team TEXT NOT NULL, username TEXT NOT NULL, state TEXT NOT NULL, submit_s BIGINT NOT NULL, end_s BIGINT NOT NULL, view TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ended_jobs_team ON ended_jobs (team, id);
CREATE INDEX IF NOT EXISTS ended_jobs_user ON ended_jobs (username, id);
CREATE TABLE IF NOT EXISTS usage (at_s BIGINT NOT NULL, team TEXT COLLATE \"C\" NOT NULL, guaranteed_milli BIGINT NOT NULL, used_milli BIGINT NOT NULL, borrowed_milli BIGINT NOT NULL, lent_milli BIGINT NOT NULL, idle_milli BIGINT NOT NULL, PRIMARY KEY (at_s, team));
";

/// A `usage` row (at_s, team, guaranteed, used, borrowed, lent, idle).
fn usage_row(r: &postgres::Row) -> UsageRow {
    UsageRow {
        at_s: r.get::<_, i64>(0) as u64,
        team: r.get(1),
        guaranteed_milli: r.get::<_, i64>(2) as u64,
        used_milli: r.get::<_, i64>(3) as u64,
        borrowed_milli: r.get::<_, i64>(4) as u64,
        lent_milli: r.get::<_, i64>(5) as u64,
        idle_milli: r.get::<_, i64>(6) as u64,
    }
}

/// Inserts `usage` rows in one statement, `conflict` what to do with a (time, team) already
/// there (empty: refuse).
fn insert_usage(
    tx: &mut postgres::Transaction<'_>,
    rows: &[UsageRow],
    conflict: &str,
) -> Result<(), StoreError> {
    // The last sample of a (time, team) wins (one statement may not touch a row twice).
    let rows: std::collections::BTreeMap<(u64, &str), &UsageRow> = rows
        .iter()
        .map(|u| ((u.at_s, u.team.as_str()), u))
        .collect();
    let int = |f: fn(&UsageRow) -> u64| rows.values().map(|u| f(u) as i64).collect::<Vec<_>>();
    let teams: Vec<&String> = rows.values().map(|u| &u.team).collect();
    tx.execute(
        &format!(
            "INSERT INTO usage (at_s, team, guaranteed_milli, used_milli, borrowed_milli, lent_milli, idle_milli) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[]) {conflict}"
        ),
        &[
            &int(|u| u.at_s),
            &teams,
            &int(|u| u.guaranteed_milli),
            &int(|u| u.used_milli),
            &int(|u| u.borrowed_milli),
            &int(|u| u.lent_milli),
            &int(|u| u.idle_milli),
        ],
    )?;
    Ok(())
}

/// An advisory lock key (`qm` in ASCII), held while the schema is created or migrated, so
/// that servers starting together do not race.
const MIGRATION_LOCK: i64 = 0x716d;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message (`db error: ERROR: ...`) says more than the summary.
        match e.as_db_error() {
            Some(db) => StoreError(format!(
                "PostgreSQL: {}: {}",
                db.code().code(),
                db.message()
            )),
            None => StoreError(format!("PostgreSQL: {e}")),
        }
    }
}

/// Work sent to the connection's thread.
type Call = Box<dyn FnOnce(&mut Conn) + Send>;

/// The connection and what this store knows of the log.
struct Conn {
    client: Client,
    /// The sequence number of the last event written or loaded.
    last_seq: u64,
    /// The lease this store writes under, once it leads ([`PgStore::lead`]): every write
    /// checks it in its own transaction.
    term: Option<i64>,
    /// Who this server is, once it has tried for the lease.
    holder: Option<String>,
}

/// Refuses the write unless this store's lease is still the current one and unexpired (by
/// the database's clock). The row stays share-locked until the transaction ends, so a
/// standby's takeover waits for this write and comes after it.
fn fence(tx: &mut postgres::Transaction<'_>, term: Option<i64>) -> Result<(), StoreError> {
    let Some(term) = term else { return Ok(()) };
    let ok = tx
        .query_opt(
            "SELECT 1 FROM qm_leader WHERE id = 1 AND term = $1 AND expires > clock_timestamp() FOR SHARE",
            &[&term],
        )?
        .is_some();
    if ok {
        Ok(())
    } else {
        Err(StoreError(format!(
            "this server's lease (term {term}) has lapsed or been taken over: it no longer writes to the database"
        )))
    }
}

/// The servers sharing a database: the lease, and every server seen lately (each says it
/// is there whenever it tries for the lease or renews it).
#[derive(Clone, Debug, PartialEq)]
pub struct Servers {
    pub leader: Option<Leader>,
    /// (holder, seconds since it was last seen), most recent first.
    pub seen: Vec<(String, f64)>,
}

/// A server not seen for this long is left out of [`Servers::seen`].
const SEEN_FOR_S: f64 = 60.0;

/// Records that `holder` is there.
fn seen(client: &mut Client, holder: &str) -> Result<(), StoreError> {
    client.execute(
        "INSERT INTO qm_servers (holder, seen) VALUES ($1, clock_timestamp()) \
         ON CONFLICT (holder) DO UPDATE SET seen = EXCLUDED.seen",
        &[&holder],
    )?;
    Ok(())
}

/// Who leads a database, as its lease row says.
#[derive(Clone, Debug, PartialEq)]
pub struct Leader {
    pub term: i64,
    pub holder: String,
    /// When the term began and when the lease lapses unless renewed (Unix seconds, the
    /// database's clock).
    pub since_s: f64,
    pub expires_s: f64,
    /// Whether the lease has lapsed (by the database's clock).
    pub lapsed: bool,
}

/// A store in a PostgreSQL database.
pub struct PgStore {
    calls: mpsc::Sender<Call>,
}

/// Where to connect and as whom: a `postgres://` URL, a password when the URL has none, and
/// the private CA that signed the database's certificate, for `sslmode=require`.
#[derive(Clone, Debug, Default)]
pub struct PgTarget {
    pub url: String,
    pub password: Option<String>,
    pub ca: Option<std::path::PathBuf>,
}

impl PgStore {
    /// Connects, creates or checks the schema, and starts the connection's thread. Refuses a
    /// database whose schema is newer than this build's.
    pub fn connect(target: &PgTarget) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config = target.url.parse().map_err(|e| {
            StoreError(format!(
                "bad PostgreSQL URL: {e}; expected postgres://USER@HOST[:PORT]/DATABASE"
            ))
        })?;
        if config.get_password().is_none() {
            if let Some(p) = &target.password {
                config.password(p);
            }
        }
        // TLS where the URL asks for it (`sslmode=require`), verified; plain text otherwise
        // (`prefer`, the URL's default, is not used: a TLS connection that verifies nothing
        // would only look safe).
        let tls = config.get_ssl_mode() == postgres::config::SslMode::Require;
        if target.ca.is_some() && !tls {
            return Err(StoreError(
                "a database CA was given, but the URL does not ask for TLS: add ?sslmode=require"
                    .into(),
            ));
        }
        let tls = if tls {
            Some(crate::pg_tls::Rustls::new(target.ca.as_deref())?)
        } else {
            config.ssl_mode(postgres::config::SslMode::Disable);
            None
        };
        // The client runs a runtime of its own, which may not start inside another (the
        // server's, a test's): it is made, and lives, on the connection's thread.
        let (tx, rx) = mpsc::channel::<Call>();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), StoreError>>(1);
        thread::Builder::new()
            .name("qm-store-pg".into())
            .spawn(move || {
                let opened = (|| {
                    let connected = match tls {
                        Some(tls) => config.connect(tls),
                        None => config.connect(NoTls),
                    };
                    let mut client = connected.map_err(|e| {
                        StoreError(format!("cannot connect to PostgreSQL: {}", describe(&e)))
                    })?;
                    migrate(&mut client)?;
                    let last_seq = client
                        .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
                        .get::<_, i64>(0) as u64;
                    Ok(Conn {
                        client,
                        last_seq,
                        term: None,
                        holder: None,
                    })
                })();
                let mut conn = match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(call) = rx.recv() {
                    call(&mut conn);
                }
            })
            .map_err(|e| StoreError(format!("cannot start the store's thread: {e}")))?;
        ready
            .recv()
            .map_err(|_| StoreError("the store's connection thread stopped".into()))??;
        Ok(PgStore { calls: tx })
    }

    /// Takes the lease if it is free or lapsed (a new term) and returns the term; else
    /// returns `None` and who leads. From then on every write of this store is fenced by
    /// the term.
    pub fn lead(&self, holder: &str, ttl_s: f64) -> Result<Result<i64, Leader>, StoreError> {
        let holder = holder.to_string();
        self.call(move |conn| {
            seen(&mut conn.client, &holder)?;
            conn.holder = Some(holder.clone());
            let row = conn.client.query_opt(
                "INSERT INTO qm_leader (id, term, holder, since, expires) \
                 VALUES (1, 1, $1, clock_timestamp(), clock_timestamp() + make_interval(secs => $2)) \
                 ON CONFLICT (id) DO UPDATE SET term = qm_leader.term + 1, holder = EXCLUDED.holder, \
                 since = EXCLUDED.since, expires = EXCLUDED.expires \
                 WHERE qm_leader.expires <= clock_timestamp() RETURNING term",
                &[&holder, &ttl_s],
            )?;
            match row {
                Some(r) => {
                    let term: i64 = r.get(0);
                    conn.term = Some(term);
                    // Whatever a former leader wrote is now the log's end.
                    conn.last_seq = conn
                        .client
                        .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
                        .get::<_, i64>(0) as u64;
                    Ok(Ok(term))
                }
                None => Ok(Err(leader(&mut conn.client)?.ok_or_else(|| {
                    StoreError("no lease row after a refused takeover".into())
                })?)),
            }
        })
    }

    /// Extends this store's lease by `ttl_s`; an error once it has lapsed or been taken.
    pub fn renew(&self, ttl_s: f64) -> Result<(), StoreError> {
        self.call(move |conn| {
            let Some(term) = conn.term else {
                return Err(StoreError("renew without a lease".into()));
            };
            if let Some(holder) = conn.holder.clone() {
                seen(&mut conn.client, &holder)?;
            }
            let n = conn.client.execute(
                "UPDATE qm_leader SET expires = clock_timestamp() + make_interval(secs => $2) \
                 WHERE id = 1 AND term = $1 AND expires > clock_timestamp()",
                &[&term, &ttl_s],
            )?;
            if n == 1 {
                Ok(())
            } else {
                Err(StoreError(format!(
                    "the lease of term {term} has lapsed or been taken over"
                )))
            }
        })
    }

    /// Who leads, if anyone ever has.
    pub fn leader(&self) -> Result<Option<Leader>, StoreError> {
        self.call(|conn| leader(&mut conn.client))
    }

    /// A second handle on the same connection (for renewing the lease beside the server).
    pub fn handle(&self) -> PgStore {
        PgStore {
            calls: self.calls.clone(),
        }
    }

    /// Runs `f` on the connection's thread and waits for its result.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.calls
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError("the store's connection thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError("the store's connection thread has stopped".into()))?
    }
}

fn leader(client: &mut Client) -> Result<Option<Leader>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT term, holder, EXTRACT(EPOCH FROM since)::FLOAT8, EXTRACT(EPOCH FROM expires)::FLOAT8, \
             expires <= clock_timestamp() FROM qm_leader WHERE id = 1",
            &[],
        )?
        .map(|r| Leader {
            term: r.get(0),
            holder: r.get(1),
            since_s: r.get(2),
            expires_s: r.get(3),
            lapsed: r.get(4),
        }))
}

/// A connection error with its cause (the summary alone says only "error connecting").
fn describe(e: &postgres::Error) -> String {
    use std::error::Error as _;
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// Creates the schema where there is none; refuses one newer than this build's.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(SCHEMA)?;
    let found: Option<i32> = tx
        .query_opt("SELECT MAX(version) FROM qm_schema", &[])?
        .and_then(|r| r.get(0));
    match found {
        None => {
            tx.execute(
                "INSERT INTO qm_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError(format!(
                "the database's schema is version {v}, newer than this binary's ({SCHEMA_VERSION}): run a newer qm, or point it at another database"
            )));
        }
        // Version 2 added the ended jobs' records (created above).
        Some(v) if v < SCHEMA_VERSION => {
            tx.execute("UPDATE qm_schema SET version = $1", &[&SCHEMA_VERSION])?;
        }
        Some(_) => {}
    }
    tx.commit()?;
    Ok(())
}

/// An `ended_jobs` row (id, team, username, state, submit_s, end_s, view).
fn ended_row(r: &postgres::Row) -> EndedJob {
    EndedJob {
        id: r.get::<_, i64>(0) as u64,
        team: r.get(1),
        user: r.get(2),
        state: r.get(3),
        submit_s: r.get::<_, i64>(4) as u64,
        end_s: r.get::<_, i64>(5) as u64,
        view: r.get(6),
    }
}

/// Inserts `ended_jobs` rows in one statement (`UNNEST` of their columns), `conflict` what to
/// do with an id already there (empty: refuse); returns their ids.
fn insert_ended(
    tx: &mut postgres::Transaction<'_>,
    ended: &[EndedJob],
    conflict: &str,
) -> Result<Vec<i64>, StoreError> {
    let ids: Vec<i64> = ended.iter().map(|e| e.id as i64).collect();
    let text = |f: fn(&EndedJob) -> &String| ended.iter().map(f).collect::<Vec<&String>>();
    let int = |f: fn(&EndedJob) -> u64| ended.iter().map(|e| f(e) as i64).collect::<Vec<_>>();
    tx.execute(
        &format!(
            "INSERT INTO ended_jobs (id, team, username, state, submit_s, end_s, view) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[]) {conflict}"
        ),
        &[
            &ids,
            &text(|e| &e.team),
            &text(|e| &e.user),
            &text(|e| &e.state),
            &int(|e| e.submit_s),
            &int(|e| e.end_s),
            &text(|e| &e.view),
        ],
    )?;
    Ok(ids)
}

fn key_params(key: (u64, u32, u32)) -> (i64, i32, i32) {
    (key.0 as i64, key.1 as i32, key.2 as i32)
}

fn log_len(
    client: &mut impl postgres::GenericClient,
    key: (u64, u32, u32),
) -> Result<u64, StoreError> {
    let (job, task, attempt) = key_params(key);
    Ok(client
        .query_one(
            "SELECT COALESCE(MAX(at + octet_length(data)), 0)::BIGINT FROM log_chunks WHERE job = $1 AND task = $2 AND attempt = $3",
            &[&job, &task, &attempt],
        )?
        .get::<_, i64>(0) as u64)
}

impl Store for PgStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.call(|conn| {
            let c = &mut conn.client;
            let mut out = Loaded::default();
            let snap = c.query_opt(
                "SELECT seq, state, extra FROM snapshots ORDER BY seq DESC LIMIT 1",
                &[],
            )?;
            let from = match snap {
                Some(row) => {
                    let seq = row.get::<_, i64>(0) as u64;
                    out.state = Some(serde_json::from_str(row.get::<_, &str>(1))?);
                    out.extra = Some(row.get::<_, String>(2));
                    seq
                }
                None => 0,
            };
            out.snapshot_seq = from;
            for row in c.query(
                "SELECT seq, event FROM events WHERE seq > $1 ORDER BY seq",
                &[&(from as i64)],
            )? {
                let seq = row.get::<_, i64>(0) as u64;
                out.events
                    .push((seq, serde_json::from_str(row.get::<_, &str>(1))?));
            }
            out.last_seq = c
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
                .get::<_, i64>(0) as u64;
            conn.last_seq = out.last_seq;
            for row in c.query("SELECT job, payload FROM payloads", &[])? {
                let job = row.get::<_, i64>(0) as u64;
                let payload: JobPayload = serde_json::from_str(row.get::<_, &str>(1))?;
                out.payloads.push((job, payload));
            }
            for row in c.query("SELECT hash, name, role, teams FROM tokens", &[])? {
                let name: String = row.get(1);
                let role = row
                    .get::<_, &str>(2)
                    .parse()
                    .map_err(|e| StoreError(format!("token {name:?}: {e}")))?;
                out.tokens.push(TokenRecord {
                    hash: row.get(0),
                    name,
                    role,
                    teams: serde_json::from_str(row.get::<_, &str>(3))?,
                });
            }
            for row in c.query("SELECT job, task, attempt, code FROM task_exits", &[])? {
                out.exits.push((
                    (
                        row.get::<_, i64>(0) as u64,
                        row.get::<_, i32>(1) as u32,
                        row.get::<_, i32>(2) as u32,
                    ),
                    row.get::<_, i32>(3),
                ));
            }
            for row in c.query(
                "SELECT name, id, credential_hash, address FROM nodes ORDER BY id",
                &[],
            )? {
                out.nodes.push(NodeRecord {
                    name: row.get(0),
                    id: row.get::<_, i64>(1) as u32,
                    credential_hash: row.get(2),
                    address: row.get(3),
                });
            }
            Ok(out)
        })
    }

    fn append(&mut self, batch: Batch<'_>) -> Result<u64, StoreError> {
        let events: Vec<String> = batch
            .events
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let (pay_jobs, pay_json): (Vec<i64>, Vec<String>) = batch
            .payloads
            .iter()
            .map(|(job, p)| Ok((*job as i64, serde_json::to_string(p)?)))
            .collect::<Result<Vec<_>, StoreError>>()?
            .into_iter()
            .unzip();
        // The last exit of a key wins, as on SQLite (one statement may not touch a row twice).
        let exits: std::collections::BTreeMap<(u64, u32, u32), i32> =
            batch.exits.iter().copied().collect();
        let tokens = batch
            .tokens
            .iter()
            .map(|t| {
                Ok((
                    t.hash.clone(),
                    t.name.clone(),
                    t.role.as_str().to_string(),
                    serde_json::to_string(&t.teams)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let nodes = batch.nodes.to_vec();
        let ended = batch.ended.to_vec();
        let usage = batch.usage.to_vec();
        self.call(move |conn| {
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            let first = conn.last_seq + 1;
            let seq = conn.last_seq + events.len() as u64;
            // One statement per table, however many rows: a group commit of hundreds of
            // submissions is a handful of round trips.
            if !events.is_empty() {
                let seqs: Vec<i64> = (first..=seq).map(|s| s as i64).collect();
                tx.execute(
                    "INSERT INTO events (seq, event) SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[])",
                    &[&seqs, &events],
                )
                .map_err(|e| {
                    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                        StoreError(format!(
                            "events {first} to {seq} were already written by another server: this one no longer writes to the database"
                        ))
                    } else {
                        e.into()
                    }
                })?;
            }
            if !pay_jobs.is_empty() {
                // The last payload of a job wins.
                tx.execute(
                    "INSERT INTO payloads (job, payload) \
                     SELECT DISTINCT ON (job) job, payload FROM UNNEST($1::BIGINT[], $2::TEXT[]) WITH ORDINALITY AS p(job, payload, n) ORDER BY job, n DESC \
                     ON CONFLICT (job) DO UPDATE SET payload = EXCLUDED.payload",
                    &[&pay_jobs, &pay_json],
                )?;
            }
            if !exits.is_empty() {
                let mut cols: (Vec<i64>, Vec<i32>, Vec<i32>, Vec<i32>) = Default::default();
                for (key, code) in &exits {
                    let (job, task, attempt) = key_params(*key);
                    cols.0.push(job);
                    cols.1.push(task);
                    cols.2.push(attempt);
                    cols.3.push(*code);
                }
                tx.execute(
                    "INSERT INTO task_exits (job, task, attempt, code) \
                     SELECT * FROM UNNEST($1::BIGINT[], $2::INTEGER[], $3::INTEGER[], $4::INTEGER[]) \
                     ON CONFLICT (job, task, attempt) DO UPDATE SET code = EXCLUDED.code",
                    &[&cols.0, &cols.1, &cols.2, &cols.3],
                )?;
            }
            for (hash, name, role, teams) in &tokens {
                tx.execute(
                    "INSERT INTO tokens (hash, name, role, teams) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (hash) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role, teams = EXCLUDED.teams",
                    &[hash, name, role, teams],
                )?;
            }
            for n in &nodes {
                // A name keeps its id; an id moves with its name (as SQLite's INSERT OR
                // REPLACE does on either key).
                tx.execute(
                    "DELETE FROM nodes WHERE id = $1 AND name <> $2",
                    &[&i64::from(n.id), &n.name],
                )?;
                tx.execute(
                    "INSERT INTO nodes (name, id, credential_hash, address) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET id = EXCLUDED.id, credential_hash = EXCLUDED.credential_hash, address = EXCLUDED.address",
                    &[&n.name, &i64::from(n.id), &n.credential_hash, &n.address],
                )?;
            }
            if !ended.is_empty() {
                let ids = insert_ended(
                    &mut tx,
                    &ended,
                    "ON CONFLICT (id) DO UPDATE SET team = EXCLUDED.team, username = EXCLUDED.username, \
                     state = EXCLUDED.state, submit_s = EXCLUDED.submit_s, end_s = EXCLUDED.end_s, view = EXCLUDED.view",
                )?;
                tx.execute("DELETE FROM payloads WHERE job = ANY($1)", &[&ids])?;
                tx.execute("DELETE FROM task_exits WHERE job = ANY($1)", &[&ids])?;
            }
            if !usage.is_empty() {
                insert_usage(
                    &mut tx,
                    &usage,
                    "ON CONFLICT (at_s, team) DO UPDATE SET guaranteed_milli = EXCLUDED.guaranteed_milli, \
                     used_milli = EXCLUDED.used_milli, borrowed_milli = EXCLUDED.borrowed_milli, \
                     lent_milli = EXCLUDED.lent_milli, idle_milli = EXCLUDED.idle_milli",
                )?;
            }
            tx.commit()?;
            conn.last_seq = seq;
            Ok(if events.is_empty() { 0 } else { seq })
        })
    }

    fn snapshot(&mut self, seq: u64, state: &ClusterState, extra: &str) -> Result<(), StoreError> {
        let state = serde_json::to_string(state)?;
        let extra = extra.to_string();
        self.call(move |conn| {
            let seq = seq as i64;
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            tx.execute(
                "INSERT INTO snapshots (seq, state, extra) VALUES ($1, $2, $3) \
                 ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state, extra = EXCLUDED.extra",
                &[&seq, &state, &extra],
            )?;
            tx.execute("DELETE FROM snapshots WHERE seq < $1", &[&seq])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn append_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        let data = data.to_vec();
        self.call(move |conn| {
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            let len = log_len(&mut tx, key)?;
            if offset > len {
                return Err(StoreError(format!(
                    "log chunk at offset {offset} leaves a gap after {len} bytes"
                )));
            }
            let skip = (len - offset) as usize;
            let mut end = len;
            if skip < data.len() {
                let (job, task, attempt) = key_params(key);
                tx.execute(
                    "INSERT INTO log_chunks (job, task, attempt, at, data) VALUES ($1, $2, $3, $4, $5)",
                    &[&job, &task, &attempt, &(len as i64), &&data[skip..]],
                )?;
                end = len + (data.len() - skip) as u64;
            }
            tx.commit()?;
            Ok(end)
        })
    }

    fn log_len(&mut self, key: (u64, u32, u32)) -> Result<u64, StoreError> {
        self.call(move |conn| log_len(&mut conn.client, key))
    }

    fn read_log(
        &mut self,
        key: (u64, u32, u32),
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        self.call(move |conn| {
            let len = log_len(&mut conn.client, key)?;
            let start = offset.min(len);
            let mut out = Vec::new();
            let (job, task, attempt) = key_params(key);
            let rows = conn.client.query(
                "SELECT at, data FROM log_chunks WHERE job = $1 AND task = $2 AND attempt = $3 \
                 AND at + octet_length(data) > $4 ORDER BY at",
                &[&job, &task, &attempt, &(start as i64)],
            )?;
            for row in rows {
                let at = row.get::<_, i64>(0) as u64;
                let data: &[u8] = row.get(1);
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
        })
    }

    fn servers(&mut self) -> Result<Option<Servers>, StoreError> {
        self.call(|conn| {
            let leader = leader(&mut conn.client)?;
            let mut seen = Vec::new();
            for row in conn.client.query(
                "SELECT holder, EXTRACT(EPOCH FROM clock_timestamp() - seen)::FLOAT8 AS ago \
                 FROM qm_servers WHERE seen > clock_timestamp() - make_interval(secs => $1) ORDER BY ago",
                &[&SEEN_FOR_S],
            )? {
                seen.push((row.get(0), row.get(1)));
            }
            Ok(Some(Servers { leader, seen }))
        })
    }

    fn ended_job(&mut self, id: u64) -> Result<Option<EndedJob>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .client
                .query_opt(
                    "SELECT id, team, username, state, submit_s, end_s, view FROM ended_jobs WHERE id = $1",
                    &[&(id as i64)],
                )?
                .map(|r| ended_row(&r)))
        })
    }

    fn prune_logs(&mut self, before_s: u64) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            let n = tx.execute(
                "DELETE FROM log_chunks WHERE job IN (SELECT id FROM ended_jobs WHERE end_s < $1)",
                &[&(before_s as i64)],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn prune_usage(&mut self, before_s: u64) -> Result<u64, StoreError> {
        let before = before_s.min(i64::MAX as u64) as i64;
        self.call(move |conn| {
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            let n = tx.execute("DELETE FROM usage WHERE at_s < $1", &[&before])?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn usage(&mut self, since_s: u64, until_s: u64) -> Result<Vec<UsageRow>, StoreError> {
        let (since, until) = (
            since_s.min(i64::MAX as u64) as i64,
            until_s.min(i64::MAX as u64) as i64,
        );
        self.call(move |conn| {
            Ok(conn
                .client
                .query(
                    "SELECT at_s, team, guaranteed_milli, used_milli, borrowed_milli, lent_milli, idle_milli FROM usage \
                     WHERE at_s >= $1 AND at_s <= $2 ORDER BY at_s, team",
                    &[&since, &until],
                )?
                .iter()
                .map(usage_row)
                .collect())
        })
    }

    fn ended_jobs(&mut self, q: &EndedQuery) -> Result<Vec<EndedJob>, StoreError> {
        let (sql, params) = ended_sql(
            q,
            |i| format!("${i}"),
            |p| format!("json_array_elements_text({p}::TEXT::JSON)"),
        );
        self.call(move |conn| {
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| match p {
                    SqlParam::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
                    SqlParam::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
                })
                .collect();
            Ok(conn
                .client
                .query(&sql, &params)?
                .iter()
                .map(ended_row)
                .collect())
        })
    }

    fn export_page(&mut self, page: &Page) -> Result<Dump, StoreError> {
        let loaded = match page {
            Page::Records => Some(self.load()?),
            _ => None,
        };
        let page = page.clone();
        self.call(move |conn| {
            let c = &mut conn.client;
            let mut out = Dump::default();
            match page {
                Page::Records => {
                    let loaded = loaded.expect("loaded above");
                    out.tokens = loaded.tokens;
                    out.nodes = loaded.nodes;
                    out.exits = loaded.exits;
                    out.snapshot = c
                        .query_opt(
                            "SELECT seq, state, extra FROM snapshots ORDER BY seq DESC LIMIT 1",
                            &[],
                        )?
                        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2)));
                }
                Page::Events { after } => {
                    for row in c.query(
                        "SELECT seq, event FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&(after as i64), &(EVENTS_PER_PAGE as i64)],
                    )? {
                        out.events.push((row.get::<_, i64>(0) as u64, row.get(1)));
                    }
                }
                Page::Payloads { after } => {
                    let after = after.map_or(-1, |j| j as i64);
                    for row in c.query(
                        "SELECT job, payload FROM payloads WHERE job > $1 ORDER BY job LIMIT $2",
                        &[&after, &(PAYLOADS_PER_PAGE as i64)],
                    )? {
                        out.payloads.push((row.get::<_, i64>(0) as u64, row.get(1)));
                    }
                }
                Page::Ended { after } => {
                    let after = after.map_or(-1, |j| j as i64);
                    for row in c.query(
                        "SELECT id, team, username, state, submit_s, end_s, view FROM ended_jobs WHERE id > $1 ORDER BY id LIMIT $2",
                        &[&after, &(ENDED_PER_PAGE as i64)],
                    )? {
                        out.ended.push(ended_row(&row));
                    }
                }
                Page::Usage { after } => {
                    let (at, team) = after.map_or((-1, String::new()), |(a, t)| (a as i64, t));
                    for row in c.query(
                        "SELECT at_s, team, guaranteed_milli, used_milli, borrowed_milli, lent_milli, idle_milli FROM usage \
                         WHERE (at_s, team) > ($1, $2) ORDER BY at_s, team LIMIT $3",
                        &[&at, &team, &(USAGE_PER_PAGE as i64)],
                    )? {
                        out.usage.push(usage_row(&row));
                    }
                }
                Page::Logs { after } => {
                    let (job, task, attempt, at) = Page::log_after(&after);
                    let (task, attempt) = (task as i32, attempt as i32);
                    for row in c.query(
                        "SELECT job, task, attempt, at, data FROM log_chunks \
                         WHERE (job, task, attempt, at) > ($1, $2, $3, $4) \
                         ORDER BY job, task, attempt, at LIMIT $5",
                        &[&job, &task, &attempt, &at, &(LOG_CHUNKS_PER_PAGE as i64)],
                    )? {
                        out.logs.push((
                            (
                                row.get::<_, i64>(0) as u64,
                                row.get::<_, i32>(1) as u32,
                                row.get::<_, i32>(2) as u32,
                            ),
                            row.get::<_, i64>(3) as u64,
                            row.get(4),
                        ));
                    }
                }
            }
            Ok(out)
        })
    }

    fn import(&mut self, dump: &Dump) -> Result<(), StoreError> {
        let events = dump.events.clone();
        let snapshot = dump.snapshot.clone();
        let payloads = dump.payloads.clone();
        let tokens = dump.tokens.clone();
        let nodes = dump.nodes.clone();
        let exits = dump.exits.clone();
        let logs = dump.logs.clone();
        let ended = dump.ended.clone();
        let usage = dump.usage.clone();
        self.call(move |conn| {
            let mut tx = conn.client.transaction()?;
            fence(&mut tx, conn.term)?;
            let ins = tx.prepare("INSERT INTO events (seq, event) VALUES ($1, $2)")?;
            for (seq, e) in &events {
                tx.execute(&ins, &[&(*seq as i64), e])?;
            }
            if let Some((seq, state, extra)) = &snapshot {
                tx.execute(
                    "INSERT INTO snapshots (seq, state, extra) VALUES ($1, $2, $3)",
                    &[&(*seq as i64), state, extra],
                )?;
            }
            let ins = tx.prepare("INSERT INTO payloads (job, payload) VALUES ($1, $2)")?;
            for (job, p) in &payloads {
                tx.execute(&ins, &[&(*job as i64), p])?;
            }
            let ins =
                tx.prepare("INSERT INTO tokens (hash, name, role, teams) VALUES ($1, $2, $3, $4)")?;
            for t in &tokens {
                let teams = serde_json::to_string(&t.teams)?;
                tx.execute(&ins, &[&t.hash, &t.name, &t.role.as_str(), &teams])?;
            }
            let ins = tx.prepare(
                "INSERT INTO nodes (name, id, credential_hash, address) VALUES ($1, $2, $3, $4)",
            )?;
            for n in &nodes {
                tx.execute(
                    &ins,
                    &[&n.name, &i64::from(n.id), &n.credential_hash, &n.address],
                )?;
            }
            let ins = tx.prepare(
                "INSERT INTO task_exits (job, task, attempt, code) VALUES ($1, $2, $3, $4)",
            )?;
            for (key, code) in &exits {
                let (job, task, attempt) = key_params(*key);
                tx.execute(&ins, &[&job, &task, &attempt, code])?;
            }
            let ins = tx.prepare(
                "INSERT INTO log_chunks (job, task, attempt, at, data) VALUES ($1, $2, $3, $4, $5)",
            )?;
            for (key, at, data) in &logs {
                let (job, task, attempt) = key_params(*key);
                tx.execute(&ins, &[&job, &task, &attempt, &(*at as i64), data])?;
            }
            if !ended.is_empty() {
                insert_ended(&mut tx, &ended, "")?;
            }
            if !usage.is_empty() {
                insert_usage(&mut tx, &usage, "")?;
            }
            tx.commit()?;
            conn.last_seq = events.last().map_or(conn.last_seq, |e| e.0);
            Ok(())
        })
    }
}

/// For tests: a new, empty database on the PostgreSQL server that `scripts/test` starts and
/// names in `QM_TEST_PG`; panics, naming the variable, where it is not set (a test that
/// needs PostgreSQL fails, never skips).
pub fn test_database() -> String {
    let base = std::env::var("QM_TEST_PG").expect(
        "QM_TEST_PG is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL and sets it",
    );
    throwaway_database(&base).expect("a throwaway database")
}

/// For tests: a new, empty database on the server `base` (a `postgres://` URL whose user may
/// create databases), named uniquely; returns its URL.
pub fn throwaway_database(base: &str) -> Result<String, StoreError> {
    // On a thread of its own: the client may not start its runtime inside another.
    let base = base.to_string();
    thread::spawn(move || make_database(&base))
        .join()
        .map_err(|_| StoreError("making a throwaway database panicked".into()))?
}

fn make_database(base: &str) -> Result<String, StoreError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "qm_test_{}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = Client::connect(base, NoTls).map_err(|e| {
        StoreError(format!(
            "cannot connect to PostgreSQL at {base}: {}",
            describe(&e)
        ))
    })?;
    client.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let (head, _) = base.rsplit_once('/').ok_or_else(|| {
        StoreError(format!(
            "{base}: expected postgres://USER@HOST:PORT/DATABASE"
        ))
    })?;
    let (_, query) = base.split_once('?').unwrap_or((base, ""));
    Ok(if query.is_empty() {
        format!("{head}/{name}")
    } else {
        format!("{head}/{name}?{query}")
    })
}
