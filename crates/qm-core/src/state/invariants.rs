//! The state's invariants, asserted after every accepted event, in release builds too: a
//! failing one is a bug in the core, and the state must not run on from it.
//!
//! - No GPU share above [`MILLI_PER_GPU`]; no node's CPU or memory above its capacity.
//! - A node's used GPU milli, CPU and memory are the sums of what the jobs holding it take.
//! - A team's `alloc_milli` is the sum of the milli-GPUs its holding jobs take.
//! - A holding job's placement has one task per task of the job, of the job's shape, on
//!   GPUs that exist, on nodes that exist and are not `Down` (a node going down requeues
//!   what ran there).
//! - Live jobs are not ended; ended jobs are not live.
//!
//! - The index of holding jobs (by node and by team) names exactly the live jobs that hold
//!   resources, and each holder's note (`Holder`, what a plan reads of it) is its record's.
//!
//! After an event only what it touched is checked (its nodes, teams and jobs): the holders of
//! its nodes are looked up, a touched team's allocation is compared with the index's sum of
//! its holders' notes (the milli-GPUs of each holder, checked against the job whenever an
//! event touches it; the sum kept as holders enter and leave), so the cost is a walk of the
//! nodes' few holders for events that move resources, and nothing for the others.
//! `check_invariants` checks every job and recounts the teams' sums from the notes.

use super::{task_shape, ClusterState, Event, Job, JobState};
use crate::model::{JobId, NodeId, NodeState, MILLI_PER_GPU};

/// What one event may change: the nodes, teams (by [`super::Team::id`]) and jobs to check
/// once it is applied. Each list is sorted and without duplicates.
#[derive(Default)]
pub(super) struct Touched {
    nodes: Vec<NodeId>,
    teams: Vec<u32>,
    jobs: Vec<JobId>,
}

fn insert_sorted<T: Ord>(list: &mut Vec<T>, item: T) {
    if let Err(i) = list.binary_search(&item) {
        list.insert(i, item);
    }
}

impl Touched {
    /// A job, its team, and the nodes it holds now.
    fn job_and_resources(&mut self, job: &Job) {
        insert_sorted(&mut self.jobs, job.spec.id);
        insert_sorted(&mut self.teams, job.team_id);
        for task in job.state.run().map_or(&[][..], |r| &r.placement) {
            insert_sorted(&mut self.nodes, task.node);
        }
    }
}

impl ClusterState {
    /// What `event` may change, found before it is applied.
    pub(super) fn touched_by(&self, event: &Event) -> Touched {
        let mut touched = Touched::default();
        match event {
            Event::Start { job, placement, .. } => {
                if let Some(j) = self.jobs.get(job) {
                    touched.job_and_resources(j);
                }
                for task in placement {
                    insert_sorted(&mut touched.nodes, task.node);
                }
            }
            Event::Exited { job, .. } | Event::Requeue { job, .. } => {
                if let Some(j) = self.jobs.get(job) {
                    touched.job_and_resources(j);
                }
            }
            // A stop (or a cancel) moves no resources until the job exits; a sample moves
            // none either, but a holder's note follows both.
            Event::Stop { job, .. }
            | Event::Cancel { job, .. }
            | Event::Utilisation { job, .. } => {
                insert_sorted(&mut touched.jobs, *job);
            }
            Event::NodeUp(spec) => insert_sorted(&mut touched.nodes, spec.id),
            Event::NodeState { node, state, .. } => {
                insert_sorted(&mut touched.nodes, *node);
                if *state == NodeState::Down {
                    for id in self.jobs.holding_by_node.get(node).into_iter().flatten() {
                        touched.job_and_resources(&self.jobs[id]);
                    }
                }
            }
            Event::SetTeam(spec) => {
                if let Some(team) = self.teams.get(&spec.name) {
                    insert_sorted(&mut touched.teams, team.id);
                }
            }
            Event::Submit(_) | Event::RemoveTeam { .. } | Event::Forget { .. } => {}
        }
        touched
    }

    /// Asserts the invariants of the nodes, teams and jobs an event touched.
    pub(super) fn check_invariants_for(&self, touched: &Touched) {
        for id in &touched.jobs {
            match (self.jobs.get(id), self.done.get(id)) {
                (Some(job), None) => self.check_job(job),
                (None, Some(job)) => assert!(
                    job.state.is_terminal(),
                    "invariant: an ended job is terminal: {id} is {}",
                    job.state.name()
                ),
                (Some(_), Some(_)) => panic!("invariant: a job is live or ended, not both: {id}"),
                // Forgotten, or refused before it was known.
                (None, None) => {}
            }
        }
        if touched.nodes.is_empty() && touched.teams.is_empty() {
            return;
        }
        // What the holders of each touched node take there, and of each touched team.
        let holder = |id: &JobId| {
            let job = self.jobs.get(id).unwrap_or_else(|| {
                panic!("invariant: the index of holding jobs names live jobs: {id}")
            });
            let run = job.state.run().unwrap_or_else(|| {
                panic!("invariant: the index of holding jobs names jobs that hold: {id}")
            });
            (job, run)
        };
        let mut node_sums: Vec<(Vec<u32>, u64, u64)> = Vec::with_capacity(touched.nodes.len());
        for n in &touched.nodes {
            let gpus = self
                .nodes
                .get(n)
                .map_or(0, |node| node.gpu_used_milli.len());
            let mut sum = (vec![0; gpus], 0, 0);
            for id in self.jobs.holding_by_node.get(n).into_iter().flatten() {
                let (job, run) = holder(id);
                let mut here = run.placement.iter().filter(|t| t.node == *n).peekable();
                assert!(
                    here.peek().is_some(),
                    "invariant: the index of holding jobs by node is exact: {id} is listed on {n}"
                );
                let node = self.nodes.get(n);
                let stopping = matches!(job.state, JobState::Stopping(..));
                assert!(
                    node.is_some_and(|node| stopping || node.state != NodeState::Down),
                    "invariant: a running job runs on live nodes: {id} holds {n}, which is {}",
                    node.map_or("unknown", |_| "down")
                );
                for task in here {
                    for &g in &task.gpus {
                        let used = sum.0.get_mut(g as usize).unwrap_or_else(|| {
                            panic!(
                                "invariant: a placement names GPUs that exist: {id} holds GPU {g} of {n}"
                            )
                        });
                        *used += task.gpu_milli;
                    }
                    sum.1 += job.spec.cpu_milli;
                    sum.2 += job.spec.mem_mib;
                }
            }
            node_sums.push(sum);
        }
        // The index notes each holder's milli-GPUs when it starts to hold, and keeps each
        // team's sum of them as holders enter and leave; `check_job` checks the note (and
        // the team) of every job an event touches, and `check_invariants` recounts the
        // sums, so a team's sum needs no walk of the thousands of holders it may have.
        let team_sums: Vec<u64> = touched
            .teams
            .iter()
            .map(|team| {
                let sum = self.jobs.held_milli_by_team.get(team).copied();
                sum.unwrap_or(0)
            })
            .collect();
        for (id, (gpu_sum, cpu_sum, mem_sum)) in touched.nodes.iter().zip(&node_sums) {
            let Some(node) = self.nodes.get(id) else {
                continue;
            };
            for (g, &used) in node.gpu_used_milli.iter().enumerate() {
                assert!(
                    used <= MILLI_PER_GPU,
                    "invariant: no GPU share above {MILLI_PER_GPU} milli: GPU {g} of {id} has {used}"
                );
            }
            assert_eq!(
                &node.gpu_used_milli, gpu_sum,
                "invariant: a node's used GPU milli is the sum of its jobs' placements: {id}"
            );
            assert!(
                node.cpu_used_milli <= node.spec.cpu_milli && node.mem_used_mib <= node.spec.mem_mib,
                "invariant: a node's CPU and memory within capacity: {id} uses {} of {} CPU milli, {} of {} MiB",
                node.cpu_used_milli,
                node.spec.cpu_milli,
                node.mem_used_mib,
                node.spec.mem_mib
            );
            assert_eq!(
                (node.cpu_used_milli, node.mem_used_mib),
                (*cpu_sum, *mem_sum),
                "invariant: a node's used CPU and memory are the sums of its jobs': {id}"
            );
        }
        for (&team_id, &sum) in touched.teams.iter().zip(&team_sums) {
            let Some(team) = self.teams.values().find(|t| t.id == team_id) else {
                continue;
            };
            assert_eq!(
                team.alloc_milli, sum,
                "invariant: a team's allocation is the sum of its holding jobs': team {} (id {team_id})",
                team.spec.name
            );
        }
    }

    /// A live job is not ended, belongs to a team that exists, and, if it holds resources,
    /// holds exactly its shape on nodes that are up.
    fn check_job(&self, job: &Job) {
        let id = job.spec.id;
        assert!(
            !job.state.is_terminal(),
            "invariant: a live job is not ended: {id} is {}",
            job.state.name()
        );
        let listed = |set: Option<&std::collections::BTreeSet<JobId>>| {
            set.is_some_and(|set| set.contains(&id))
        };
        let noted = self
            .jobs
            .holding_by_team
            .get(&job.team_id)
            .and_then(|holders| holders.get(&id));
        assert_eq!(
            noted.is_some(),
            job.state.run().is_some(),
            "invariant: the index of holding jobs lists exactly the jobs that hold: {id} is {}",
            job.state.name()
        );
        if let Some(&milli) = noted {
            assert_eq!(
                milli,
                job.spec.milli_total(),
                "invariant: the index of holding jobs notes each holder's milli-GPUs: {id}"
            );
        }
        if let Some(key) = super::HoldKey::of(job) {
            let noted = self.jobs.holding.get(&key);
            assert!(
                noted == super::Holder::of(job).as_ref()
                    && !self.jobs.holding.contains_key(&key.flipped()),
                "invariant: each holder is noted once, in its place, with its record's note: \
                 {id} noted {noted:?}"
            );
        }
        if let Some(run) = job.state.run() {
            assert!(
                run.placement
                    .iter()
                    .all(|t| listed(self.jobs.holding_by_node.get(&t.node))),
                "invariant: the index of holding jobs lists {id} under each of its nodes"
            );
        }
        assert!(
            self.teams
                .get(&job.spec.team)
                .is_some_and(|t| t.id == job.team_id),
            "invariant: a live job's team exists and carries its id: {id} of team {} (id {})",
            job.spec.team,
            job.team_id
        );
        let Some(run) = job.state.run() else { return };
        assert_eq!(
            run.placement.len(),
            job.spec.tasks as usize,
            "invariant: a holding job places every task: {id}"
        );
        let (gpus, milli) = task_shape(job.spec.gpu);
        for task in &run.placement {
            assert!(
                task.gpus.len() == gpus && task.gpu_milli == milli,
                "invariant: a task holds the job's GPU shape: {id} on {}",
                task.node
            );
            // A running job runs on live nodes; a stopping one may still hold a node that
            // went down (its tasks there are lost; its others are being stopped).
            let node = self.nodes.get(&task.node);
            let stopping = matches!(job.state, JobState::Stopping(..));
            assert!(
                node.is_some_and(|n| stopping || n.state != NodeState::Down),
                "invariant: a running job runs on live nodes: {id} holds {}, which is {}",
                task.node,
                node.map_or("unknown", |_| "down")
            );
            let count = node.map_or(0, |n| n.spec.gpus);
            assert!(
                task.gpus.iter().all(|&g| g < count),
                "invariant: a placement names GPUs that exist: {id} on {}",
                task.node
            );
        }
    }

    /// Asserts every invariant over the whole state (see this module's list). For tests,
    /// after every step; `apply` checks only what each event touched.
    pub fn check_invariants(&self) {
        let mut teams: Vec<u32> = self.teams.values().map(|t| t.id).collect();
        teams.sort_unstable();
        let mut jobs: Vec<JobId> = self.jobs.keys().chain(self.done.keys()).copied().collect();
        jobs.sort_unstable();
        jobs.dedup();
        // Every job that holds is checked by `check_job` to be listed under its own team,
        // with its own milli-GPUs, and every job that does not, not to be; so equal counts
        // leave no other entry, and the index is exact.
        let holders = self
            .jobs
            .values()
            .filter(|j| j.state.run().is_some())
            .count();
        let listed: usize = self
            .jobs
            .holding_by_team
            .values()
            .map(|set| set.len())
            .sum();
        assert_eq!(
            listed, holders,
            "invariant: the index of holding jobs by team lists each holder once"
        );
        let mut by_team: std::collections::BTreeMap<u32, usize> = Default::default();
        let mut by_user: std::collections::BTreeMap<String, usize> = Default::default();
        for j in self.jobs.values().filter(|j| j.state.run().is_none()) {
            *by_team.entry(j.team_id).or_default() += 1;
            *by_user.entry(j.spec.user.clone()).or_default() += 1;
        }
        assert_eq!(
            (&by_team, &by_user),
            (&self.jobs.pending_by_team, &self.jobs.pending_by_user),
            "invariant: the pending counts by team and user are the pending jobs'"
        );
        let mut queues: std::collections::BTreeMap<u32, super::TeamQueue> = Default::default();
        for j in self.jobs.values().filter(|j| j.state.run().is_none()) {
            let q = queues.entry(j.team_id).or_default();
            q.order.insert(super::queue_key(&j.spec));
            *q.asks.entry(j.spec.milli_total()).or_default() += 1;
            q.pinned += usize::from(!j.spec.preemptible);
        }
        assert_eq!(
            queues, self.jobs.queues,
            "invariant: each team's queue holds exactly its pending jobs, in plan order"
        );
        let mut arrays: std::collections::BTreeMap<JobId, usize> = Default::default();
        for j in self.jobs.values().filter(|j| j.state.run().is_some()) {
            if let Some(a) = j.spec.array.filter(|a| a.max_running.is_some()) {
                *arrays.entry(a.array).or_default() += 1;
            }
        }
        assert_eq!(
            arrays, self.jobs.holding_by_array,
            "invariant: the count of holding jobs by array is theirs"
        );
        let mut shapes: std::collections::BTreeMap<super::MixKey, u64> = Default::default();
        for (key, tasks) in self.jobs.values().filter_map(|j| super::mix_key(&j.spec)) {
            *shapes.entry(key).or_default() += tasks;
        }
        assert_eq!(
            shapes, self.jobs.shapes,
            "invariant: the mix counts the tasks of exactly the live jobs, by shape"
        );
        let holding: std::collections::BTreeMap<super::HoldKey, super::Holder> = self
            .jobs
            .values()
            .filter_map(|j| Some((super::HoldKey::of(j)?, super::Holder::of(j)?)))
            .collect();
        assert_eq!(
            holding, self.jobs.holding,
            "invariant: the holding jobs are exactly the jobs that hold, each with its note"
        );
        assert_eq!(
            super::Clocked::of(holding.iter().map(|(k, n)| (k.id, n))),
            self.jobs.clocked,
            "invariant: the holders the clock may act on are those of the notes"
        );
        let mut teams_with_holders: Vec<u32> = self.jobs.holding_by_team.keys().copied().collect();
        teams.append(&mut teams_with_holders);
        teams.sort_unstable();
        teams.dedup();
        let mut nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        nodes.extend(self.jobs.holding_by_node.keys().copied());
        nodes.sort_unstable();
        nodes.dedup();
        let all = Touched { nodes, teams, jobs };
        self.check_invariants_for(&all);
        let recount: std::collections::BTreeMap<u32, u64> = self
            .jobs
            .holding_by_team
            .iter()
            .map(|(&team, holders)| (team, holders.values().sum()))
            .collect();
        assert_eq!(
            recount, self.jobs.held_milli_by_team,
            "invariant: each team's sum of its holders' milli-GPUs is the sum of their notes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, StopCause};
    use crate::testkit::{ClusterBuilder, Harness, JobBuilder};
    use crate::JobId;

    /// Two teams, one job of each running.
    fn running() -> (Harness, JobId) {
        let state = ClusterBuilder::new()
            .racks(1, 2, 8)
            .team("a", 8)
            .team("b", 8)
            .build();
        let mut h = Harness::new(state);
        let job = h.submit(JobBuilder::new("a").gpus(2));
        h.submit(JobBuilder::new("b").gpus(3));
        h.step();
        h.state.check_invariants();
        (h, job)
    }

    #[test]
    #[should_panic(expected = "notes each holder's milli-GPUs")]
    fn a_wrong_note_of_a_holders_milli_is_caught() {
        let (mut h, job) = running();
        let team = h.state.jobs[&job].team_id;
        *h.state
            .jobs
            .holding_by_team
            .get_mut(&team)
            .and_then(|m| m.get_mut(&job))
            .expect("noted") += 1_000;
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "lists exactly the jobs that hold")]
    fn a_holder_noted_under_another_team_is_caught() {
        let (mut h, job) = running();
        let team = h.state.jobs[&job].team_id;
        let milli = h
            .state
            .jobs
            .holding_by_team
            .get_mut(&team)
            .unwrap()
            .remove(&job);
        let other = *h
            .state
            .jobs
            .holding_by_team
            .keys()
            .find(|&&t| t != team)
            .unwrap();
        h.state
            .jobs
            .holding_by_team
            .get_mut(&other)
            .unwrap()
            .insert(job, milli.unwrap());
        h.state.check_invariants();
    }

    /// Where the state notes a holder, and what.
    fn noted(h: &Harness, job: JobId) -> (super::super::HoldKey, super::super::Holder) {
        let found = h.state.jobs.holding.iter().find(|(k, _)| k.id == job);
        let (key, note) = found.expect("noted");
        (*key, note.clone())
    }

    #[test]
    fn a_holders_note_follows_its_run_and_its_place_its_cause() {
        let (mut h, job) = running();
        let at = h.now;
        assert!(!noted(&h, job).0.leaving);
        // A sample renews the note.
        let sample = Event::Utilisation {
            job,
            pct: 0,
            attempt: None,
            at_s: at + 1,
        };
        crate::apply(&mut h.state, sample).unwrap();
        assert_eq!(noted(&h, job).1.idle_since_s, Some(at + 1));
        // A priority stop puts it last among its team's, a cancel of it back in its place.
        let b = h.submit(JobBuilder::new("a").gpus(8).priority(5));
        let stop = Event::Stop {
            job,
            cause: StopCause::Priority,
            beneficiary: Some(b),
            borrowing: false,
            at_s: at + 2,
        };
        crate::apply(&mut h.state, stop).unwrap();
        let (key, note) = noted(&h, job);
        assert!(key.leaving);
        assert_eq!(note.stop.map(|s| s.1), Some(StopCause::Priority));
        let cancel = Event::Cancel {
            job,
            at_s: at + 3,
            unmet: None,
        };
        crate::apply(&mut h.state, cancel).unwrap();
        let (key, note) = noted(&h, job);
        assert!(!key.leaving);
        assert_eq!(note.stop.map(|s| s.1), Some(StopCause::Cancel));
        assert_eq!(h.state.jobs.holding.len(), 2);
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "each with its note")]
    fn a_holders_note_that_is_not_its_records_is_caught() {
        let (mut h, job) = running();
        let (key, _) = noted(&h, job);
        h.state.jobs.holding.get_mut(&key).unwrap().started_s += 1;
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "each with its note")]
    fn a_holder_noted_in_a_stale_place_is_caught() {
        let (mut h, job) = running();
        let (key, note) = noted(&h, job);
        h.state.jobs.holding.remove(&key);
        h.state.jobs.holding.insert(key.flipped(), note);
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "the clock may act on")]
    fn an_idle_holder_missing_from_the_clocked_index_is_caught() {
        let (mut h, job) = running();
        let sample = Event::Utilisation {
            job,
            pct: 0,
            attempt: None,
            at_s: h.now + 1,
        };
        crate::apply(&mut h.state, sample).unwrap();
        assert!(h.state.jobs.clocked.idle.remove(&job), "filed as idle");
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "the sum of their notes")]
    fn a_kept_sum_that_is_not_the_sum_of_the_notes_is_caught() {
        let (mut h, job) = running();
        let team = h.state.jobs[&job].team_id;
        *h.state.jobs.held_milli_by_team.get_mut(&team).unwrap() += 1;
        let name = h.state.jobs[&job].spec.team.clone();
        // The allocation agrees with the wrong sum: only the recount tells.
        h.state.teams.get_mut(&name).unwrap().alloc_milli += 1;
        h.state.check_invariants();
    }

    #[test]
    #[should_panic(expected = "a team's allocation is the sum")]
    fn an_allocation_that_is_not_the_sum_of_the_notes_is_caught() {
        let (mut h, job) = running();
        let name = h.state.jobs[&job].spec.team.clone();
        h.state.teams.get_mut(&name).unwrap().alloc_milli += 1;
        h.state.check_invariants();
    }
}
