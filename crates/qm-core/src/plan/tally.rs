//! What each team's runs add up to, kept from plan to plan. Most plans need of the running
//! work only sums: what each team holds, how much of it counts inside its guarantee, when
//! each node drains, how much reclaim could free, whether some pending job outranks a run.
//! The list of runs itself (`RunInfo`) is needed only where a plan stops work (reclaim,
//! priority preemption) or explains: a few plans in a hundred on a busy cluster (measured
//! on the 160,184-job `big-gang` week: the victims were looked at in 4 % of the plans that
//! had something waiting).
//!
//! So a plan that has neither idle runs nor a pending job pinned to its home (each of
//! which needs the runs one by one from the start) adds the teams' tallies instead of
//! walking every run. Jobs waiting on holds count inside their team's guarantee before
//! (a reclaim's) or among (a priority preemption's) its runs, so a team with such jobs is
//! tallied from them (its `Seed`, part of what the tally is read again for).
//!
//! A team's tally is made by walking that team's runs, and is kept with the state's
//! derived data (`Derived::tallies`), stamped with the team's `Stamps` and the time until
//! which nothing in it can change by the clock alone (a time limit reached, a
//! checkpointing run's minimum run time passed, a checkpoint's cheap window opening or
//! closing; a run without checkpoints that comes of age, and may be taken from then on,
//! adds what it adds then as a `Flip` that the plans after that time read). A later plan
//! reads it again while the stamp, the policy and the time allow. A team whose holders
//! changed has its tally brought up to date from the state's log of the notes that
//! entered and left (`HolderLog`) where the changes allow it (`update`: runs that leave
//! are taken out, runs that enter after every run counted are counted on, as the walk
//! would), and is walked again where they do not. The runs are listed, the way the full
//! scan lists them, the first time a step asks for them (`Planner::ensure_runs`).
//!
//! Debug builds (every test) check every plan's sums against the full scan's, and every
//! tally brought up to date against a walk of the team's runs.

use std::sync::Mutex;

use crate::model::{JobId, PolicyKind, Secs};
use crate::state::{Admission, HoldKey, Holder};

use super::planner::Planner;
use super::reserve::Release;
use super::running::SURPLUS_MAX_LOSS_S;

/// The tallies of the teams' runs, by team id, as the plans that walked them made them.
#[derive(Default)]
pub(crate) struct Tallies(Mutex<std::collections::BTreeMap<u32, Tally>>);

/// A copy of the state starts without tallies: the first plan makes them again.
impl Clone for Tallies {
    fn clone(&self) -> Tallies {
        Tallies::default()
    }
}

/// Where a team's count inside its guarantee starts: the pools' milli-GPUs taken by the
/// jobs waiting on a reclaim's hold, and the jobs waiting on a priority preemption's hold.
type Seed = (Vec<u64>, Vec<(JobId, usize, u64)>);

/// What a run adds to its team's tally from the moment it has run its minimum time and
/// may be taken (a run without checkpoints, not stopping, under `default`): its touched
/// milli-GPUs to what reclaim could free where it counts as borrowed, and its priority to
/// those a pending job may outrank. Young runs are many on a busy cluster (a run started
/// in the last five minutes, in the simulator), so the tallies would otherwise be made
/// again whenever one of them comes of age.
#[derive(Clone, Debug, PartialEq)]
struct Flip {
    job: JobId,
    at_s: Secs,
    model: usize,
    touched: u64,
    priority: i32,
}

/// One team's runs (those whose first node is in the plan's view), summed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tally {
    /// The team's stamp and the policy it was made under, and the time span in which it
    /// holds: from when it was made until a run's properties change with the clock.
    stamp: u64,
    policy: PolicyKind,
    from_s: Secs,
    until_s: Secs,
    /// How far into the state's `HolderLog` it is up to date.
    log_pos: u64,
    /// The planner's index of the team.
    team: Option<usize>,
    /// What the team's count inside its guarantee started from: the milli-GPUs of the jobs
    /// waiting on a reclaim's hold, by pool, and the jobs waiting on a priority
    /// preemption's hold (`count_holds`); none without holds. Part of the stamp.
    seed: Seed,
    /// The jobs waiting on a priority preemption's hold that counted inside the guarantee,
    /// with their pool and milli-GPUs: their usage is set aside (`count_waiting`).
    set_aside: Vec<(JobId, usize, u64)>,
    /// Milli-GPUs held, by model, and milli-CPUs.
    held: Vec<u64>,
    cpu: u64,
    /// `[pool]` milli-GPUs counted inside the guarantee (`classify`), and the latest start
    /// of a run counted there.
    used: Vec<u64>,
    latest_start_s: Secs,
    /// `[model]` milli-GPUs of every GPU touched by borrowed runs reclaim may stop, and
    /// milli-GPUs of runs counted inside the guarantee that are cheap to stop
    /// (`Victims::surplus`, counted where the team holds more than its guarantee).
    victims: Vec<u64>,
    surplus: Vec<u64>,
    /// The lowest priority among the runs a pending job of the team may outrank.
    lowest: Option<i32>,
    /// Runs that may be taken once they have run their minimum time, and what they add
    /// then (`Flip`): read by the plans after that time instead of the tally being made
    /// again.
    flips: Vec<Flip>,
    /// Runs that reached their time limit and are not stopping, in the team's order.
    over: Vec<JobId>,
    /// Some run is idle: the plan needs the runs one by one.
    idle: bool,
    /// What each task gives back and when (by its time limit: the nodes' drain times), in
    /// the order the timeline lists the runs (`Planner::releases`).
    releases: Vec<Release>,
    /// The runs counted, in the walk's order (`Entry`).
    entries: Vec<Entry>,
}

/// One run as its team's tally counted it, in the walk's order: what taking it out again
/// needs (`Planner::update`).
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    key: HoldKey,
    /// Counted inside the guarantee.
    guaranteed: bool,
    /// Its releases, in the tally's list.
    releases: u32,
    /// Counted in what reclaim could free, in the cheap surplus, in the lowest priority.
    victim: bool,
    surplus: bool,
    low: Option<i32>,
}

impl Tally {
    /// Debug builds: whether it sums what `other` sums (the times it holds for apart).
    fn same_sums(&self, other: &Tally) -> bool {
        let sorted = |t: &Tally| {
            let mut over = t.over.clone();
            over.sort_unstable();
            over
        };
        self.team == other.team
            && self.held == other.held
            && self.cpu == other.cpu
            && self.used == other.used
            && self.latest_start_s == other.latest_start_s
            && self.victims == other.victims
            && self.surplus == other.surplus
            && self.lowest == other.lowest
            && sorted(self) == sorted(other)
            && self.idle == other.idle
            && self.releases == other.releases
            && self.entries == other.entries
            && self.set_aside == other.set_aside
            && self.flips.len() == other.flips.len()
            && self.flips.iter().all(|f| other.flips.contains(f))
    }
}

impl<'a> Planner<'a> {
    /// The sums of the running work from the teams' tallies, without listing the runs;
    /// `false`, having changed nothing, where the plan needs the runs from the start (an
    /// idle run, a pending job pinned to its home).
    pub(super) fn scan_tallies(&mut self) -> bool {
        let state: &'a crate::state::ClusterState = self.state;
        let default = self.policy == PolicyKind::Default;
        if default && state.jobs.queues.values().any(|q| q.pinned > 0) {
            return false;
        }
        // The jobs waiting on holds count before (a reclaim's) or among (a priority
        // preemption's) their team's runs: each team's tally starts from them. (The counts
        // are taken back where the plan turns out to need the full scan.)
        let saved = (!state.holds.is_empty()).then(|| {
            (
                self.acct.guaranteed_used.clone(),
                self.acct.guarantee_set_aside.clone(),
            )
        });
        let mut waiting = self.count_holds();
        let tallies = &state.derived.tallies.0;
        // A plan that panicked while holding them may have left them half made: start anew.
        let mut kept = tallies.lock().unwrap_or_else(|poisoned| {
            tallies.clear_poison();
            let mut kept = poisoned.into_inner();
            kept.clear();
            kept
        });
        let holding = &state.jobs.holding;
        let mut tallied = Vec::new();
        let mut from = HoldKey::first_of(0);
        while let Some((key, _)) = holding.range(from..).next() {
            let id = key.team_id;
            let stamp = state.jobs.stamps.of(id);
            let team = self.team_of_id(id);
            let seed: Seed = match team {
                Some(t) => (
                    self.acct.guaranteed_used[t].clone(),
                    waiting.remove(&t).unwrap_or_default(),
                ),
                None => Seed::default(),
            };
            let fresh = kept.get(&id).is_some_and(|t| {
                t.stamp == stamp
                    && t.policy == self.policy
                    && t.from_s <= self.now
                    && self.now < t.until_s
                    && t.seed == seed
            });
            if !fresh {
                let updated = kept
                    .remove(&id)
                    .and_then(|old| self.update(old, id, stamp, &seed));
                let tally = match updated {
                    Some(updated) => {
                        if cfg!(debug_assertions) {
                            let walked = self.tally(id, stamp, seed);
                            assert!(
                                updated.same_sums(&walked),
                                "a tally brought up to date is the walk's: {updated:?} against {walked:?}"
                            );
                        }
                        updated
                    }
                    None => self.tally(id, stamp, seed),
                };
                kept.insert(id, tally);
            }
            if kept[&id].idle {
                if let Some(saved) = saved {
                    (self.acct.guaranteed_used, self.acct.guarantee_set_aside) = saved;
                }
                return false;
            }
            tallied.push((id, stamp));
            match id.checked_add(1) {
                Some(next) => from = HoldKey::first_of(next),
                None => break,
            }
        }
        self.view.drain = vec![0; self.view.ids.len()];
        let mut over = Vec::new();
        for (id, _) in &tallied {
            let tally = &kept[id];
            if let Some(t) = tally.team {
                for (model, &milli) in tally.held.iter().enumerate() {
                    if milli > 0 {
                        self.add_alloc(t, model, milli);
                    }
                }
                for &a in &self.teams.lineage[t] {
                    self.acct.cpu[a] += tally.cpu;
                }
                debug_assert_eq!(
                    self.acct.guaranteed_used[t], tally.seed.0,
                    "one team id per planner team"
                );
                self.acct.guaranteed_used[t].clone_from(&tally.used);
                for &(b, pool, milli) in &tally.set_aside {
                    self.acct.guarantee_set_aside.insert(b, (t, pool, milli));
                }
                let latest = &mut self.acct.guaranteed_latest_start[t];
                *latest = (*latest).max(tally.latest_start_s);
            }
            for r in &tally.releases {
                let d = &mut self.view.drain[r.node as usize];
                *d = (*d).max(r.end_s);
            }
            for (m, &milli) in tally.victims.iter().enumerate() {
                self.victims.milli_left[m] += milli;
            }
            for f in tally.flips.iter().filter(|f| f.at_s <= self.now) {
                self.victims.milli_left[f.model] += f.touched;
            }
            over.extend_from_slice(&tally.over);
        }
        self.count_waiting_without_runs(waiting);
        over.sort_unstable();
        self.out
            .stops
            .extend(over.into_iter().map(super::running::time_limit_stop));
        if default {
            // As the full scan counts them: where the team (sub-teams included) holds more
            // than its guarantee in the model's pool.
            for (id, _) in &tallied {
                let tally = &kept[id];
                let Some(t) = tally.team else { continue };
                for (m, &milli) in tally.surplus.iter().enumerate() {
                    let pool = self.teams.pool_of_model[t][m];
                    if milli > 0 && self.acct.alloc[t][pool] > self.teams.pools[t][pool].guaranteed
                    {
                        self.victims.surplus_milli[m] += milli;
                    }
                }
            }
            let mut lowest = vec![None; self.teams.names.len()];
            for (id, _) in &tallied {
                let tally = &kept[id];
                let Some(t) = tally.team else { continue };
                let due = tally.flips.iter().filter(|f| f.at_s <= self.now);
                for low in tally.lowest.into_iter().chain(due.map(|f| f.priority)) {
                    let l: &mut Option<i32> = &mut lowest[t];
                    *l = Some(l.map_or(low, |l| l.min(low)));
                }
            }
            self.lowest_takable = Some(lowest);
        }
        self.tallied = Some(tallied);
        true
    }

    /// The releases of the runs, from the tallies this plan added, in the order the walk
    /// of the holders gives them; `None` where the plan added none, or where one of them
    /// has since been replaced by a tally of other holders.
    pub(super) fn tallied_releases(&self) -> Option<Vec<Release>> {
        let tallied = self.tallied.as_ref()?;
        let kept = self.state.derived.tallies.0.lock().ok()?;
        let mut all = Vec::new();
        for (id, stamp) in tallied {
            let tally = kept.get(id).filter(|t| t.stamp == *stamp)?;
            all.extend_from_slice(&tally.releases);
        }
        Some(all)
    }

    /// Walks team `id`'s runs as the full scan does (`scan_full`, `classify`), summing,
    /// its count inside the guarantee starting from `seed`.
    fn tally(&self, id: u32, stamp: u64, seed: Seed) -> Tally {
        let state = self.state;
        let models = self.models.len();
        let team = self.team_of_id(id);
        let mut t = Tally {
            stamp,
            policy: self.policy,
            from_s: self.now,
            until_s: Secs::MAX,
            log_pos: state.jobs.holder_log.end(),
            team,
            held: vec![0; models],
            cpu: 0,
            used: match team {
                Some(t) if seed.0.is_empty() => vec![0; self.teams.pools[t].len()],
                _ => seed.0.clone(),
            },
            set_aside: Vec::new(),
            latest_start_s: 0,
            victims: vec![0; models],
            surplus: vec![0; models],
            lowest: None,
            flips: Vec::new(),
            over: Vec::new(),
            idle: false,
            releases: Vec::new(),
            entries: Vec::new(),
            seed,
        };
        // The jobs waiting on a priority preemption's hold, until counted.
        let mut waiting = Some(std::mem::take(&mut t.seed.1)).filter(|w| !w.is_empty());
        let end = id.checked_add(1).map(HoldKey::first_of);
        let block = match end {
            Some(end) => state.jobs.holding.range(HoldKey::first_of(id)..end),
            None => state.jobs.holding.range(HoldKey::first_of(id)..),
        };
        for (key, note) in block {
            self.add_note(&mut t, key, note, &mut waiting);
        }
        if let (Some(tm), Some(held)) = (team, waiting) {
            self.count_waiting_into(tm, &held, &mut t.used, &mut t.set_aside);
            t.seed.1 = held;
        }
        t
    }

    /// Counts one run into its team's tally, after those before it in the walk's order.
    fn add_note(
        &self,
        t: &mut Tally,
        key: &HoldKey,
        note: &Holder,
        waiting: &mut Option<Vec<(JobId, usize, u64)>>,
    ) {
        let now = self.now;
        let team = t.team;
        let default = self.policy == PolicyKind::Default;
        let Some(n) = note.first.and_then(|(node, ..)| self.view.dense(node)) else {
            return;
        };
        let model = self.model_at(n);
        let milli = note.milli;
        if let Some(tm) = team.filter(|_| key.leaving || key.admission == Admission::Borrowed) {
            if let Some(held) = waiting.take() {
                self.count_waiting_into(tm, &held, &mut t.used, &mut t.set_aside);
                t.seed.1 = held;
            }
        }
        if team.is_some() {
            t.held[model] += milli;
            t.cpu += note.cpu_milli * u64::from(note.tasks);
        }
        if note.idle_since_s.is_some() {
            t.idle = true;
        }
        let stopping = note.stop.is_some();
        let elapsed = now.saturating_sub(note.started_s);
        let over = super::running::past_limit(note, now);
        if !stopping {
            if let Some(limit) = note.time_limit_s {
                if over {
                    t.over.push(key.id);
                } else {
                    t.until_s = t.until_s.min(note.started_s.saturating_add(limit));
                }
            }
        }
        let stopped = stopping || over;
        let takable = note.preemptible && elapsed >= note.min_run_s;
        let of_age = note.started_s.saturating_add(note.min_run_s);
        let checkpoints = note.checkpoint_every_s.is_some_and(|e| e > 0);
        if note.preemptible && !takable && checkpoints {
            t.until_s = t.until_s.min(of_age);
        }
        let before = t.releases.len();
        self.run_releases(key.id, note, |r| t.releases.push(r));
        let mut entry = Entry {
            key: *key,
            guaranteed: false,
            releases: (t.releases.len() - before) as u32,
            victim: false,
            surplus: false,
            low: None,
        };
        // Its admission under the current quotas (`classify`).
        if let Some(tm) = team {
            let pool = self.teams.pool_of_model[tm][model];
            if !default
                || (milli > 0 && t.used[pool] + milli <= self.teams.pools[tm][pool].guaranteed)
            {
                t.used[pool] += milli;
                t.latest_start_s = t.latest_start_s.max(note.started_s);
                entry.guaranteed = true;
            }
        }
        let mode = if entry.guaranteed {
            Admission::Guaranteed
        } else {
            Admission::Borrowed
        };
        if default && !stopped {
            if note.preemptible && !takable && !checkpoints {
                t.flips.push(Flip {
                    job: key.id,
                    at_s: of_age,
                    model,
                    touched: if mode == Admission::Borrowed {
                        note.touched
                    } else {
                        0
                    },
                    priority: note.priority,
                });
            }
            if mode == Admission::Borrowed && takable {
                t.victims[model] += note.touched;
                entry.victim = true;
            }
            if takable {
                t.lowest = Some(t.lowest.map_or(note.priority, |l| l.min(note.priority)));
                entry.low = Some(note.priority);
            }
            if takable && mode == Admission::Guaranteed && team.is_some() {
                if let Some(every) = note.checkpoint_every_s.filter(|&e| e > 0) {
                    let into = elapsed % every;
                    if into <= SURPLUS_MAX_LOSS_S {
                        t.surplus[model] += milli;
                        entry.surplus = true;
                        if every > SURPLUS_MAX_LOSS_S + 1 {
                            t.until_s = t.until_s.min(now + (SURPLUS_MAX_LOSS_S + 1 - into));
                        }
                    } else {
                        t.until_s = t.until_s.min(now + (every - into));
                    }
                }
            }
        }
        t.entries.push(entry);
    }

    /// Team `id`'s tally `old` brought up to date with the changes of its holders since it
    /// was made, where they allow it without walking the team's runs again; `None`
    /// where they do not: a team with jobs waiting on holds; a tally whose time has run
    /// out; a run entering anywhere but after every run counted (a start comes last among
    /// its team's runs where it counts as borrowed, or where no run counts as borrowed); a
    /// run leaving that counted inside the guarantee before one that did not (the later
    /// one might now count inside); an idle run leaving; the log not reaching back.
    fn update(&self, mut old: Tally, id: u32, stamp: u64, seed: &Seed) -> Option<Tally> {
        let now = self.now;
        let unseeded = seed.1.is_empty() && seed.0.iter().all(|&u| u == 0);
        if old.policy != self.policy
            || !unseeded
            || old.seed != *seed
            || now < old.from_s
            || now >= old.until_s
            || old.team != self.team_of_id(id)
        {
            return None;
        }
        // The runs come of age since count as the walk now counts them.
        let (due, young): (Vec<Flip>, Vec<Flip>) = old.flips.drain(..).partition(|f| f.at_s <= now);
        old.flips = young;
        for f in due {
            old.victims[f.model] += f.touched;
            old.lowest = Some(old.lowest.map_or(f.priority, |l| l.min(f.priority)));
            let e = old.entries.iter_mut().find(|e| e.key.id == f.job)?;
            e.victim = !e.guaranteed;
            e.low = Some(f.priority);
        }
        let log = &self.state.jobs.holder_log;
        // Each place's note before the changes (`None`: none there) and after them.
        let mut net: std::collections::BTreeMap<HoldKey, (Option<&Holder>, Option<&Holder>)> =
            std::collections::BTreeMap::new();
        for change in log.since(old.log_pos)?.filter(|c| c.key.team_id == id) {
            let now_there = change.entered.then_some(&change.note);
            net.entry(change.key)
                .and_modify(|e| e.1 = now_there)
                .or_insert(((!change.entered).then_some(&change.note), now_there));
        }
        // A gang's note shows its first task only: one that left and came back with the
        // same note may hold other GPUs now.
        let same = |b: &Holder, a: &Holder| a == b && b.tasks <= 1;
        let left = net
            .iter()
            .filter_map(|(k, (before, after))| match (before, after) {
                (Some(b), a) if a.is_none_or(|a| !same(b, a)) => Some((k, *b)),
                _ => None,
            });
        let left: Vec<(&HoldKey, &Holder)> = left.collect();
        for (key, note) in left {
            let dense = note.first.and_then(|(node, ..)| self.view.dense(node));
            let found = old.entries.binary_search_by_key(key, |e| e.key);
            let (Some(n), Ok(i)) = (dense, found) else {
                if dense.is_none() && found.is_err() {
                    continue; // Never counted.
                }
                return None;
            };
            let e = old.entries[i].clone();
            if note.idle_since_s.is_some()
                || (e.guaranteed && old.entries[i + 1..].iter().any(|x| !x.guaranteed))
            {
                return None;
            }
            let model = self.model_at(n);
            if let Some(tm) = old.team {
                old.held[model] -= note.milli;
                old.cpu -= note.cpu_milli * u64::from(note.tasks);
                if e.guaranteed {
                    old.used[self.teams.pool_of_model[tm][model]] -= note.milli;
                }
            }
            old.over.retain(|&j| j != key.id);
            old.flips.retain(|f| f.job != key.id);
            let from: usize = old.entries[..i].iter().map(|x| x.releases as usize).sum();
            old.releases.drain(from..from + e.releases as usize);
            if e.victim {
                old.victims[model] -= note.touched;
            }
            if e.surplus {
                old.surplus[model] -= note.milli;
            }
            old.entries.remove(i);
            if e.guaranteed {
                old.latest_start_s = old
                    .entries
                    .iter()
                    .filter(|x| x.guaranteed)
                    .map(|x| x.key.started_s)
                    .max()
                    .unwrap_or(0);
            }
            if e.low.is_some() {
                old.lowest = old.entries.iter().filter_map(|x| x.low).min();
            }
        }
        // Then the runs that entered, after every run counted.
        let mut none = None;
        for (key, (before, after)) in &net {
            let Some(note) = after.filter(|a| before.is_none_or(|b| !same(b, a))) else {
                continue;
            };
            if old.entries.last().is_some_and(|e| e.key >= *key) {
                return None;
            }
            self.add_note(&mut old, key, note, &mut none);
        }
        old.stamp = stamp;
        old.from_s = now;
        old.log_pos = log.end();
        Some(old)
    }
}
