//! Priorities inside a team: a job that cannot start preempts its own team's lower-priority
//! work, and nothing else.

use qm_core::testkit::{Harness, JobBuilder};
use qm_core::*;

use super::two_teams;

#[test]
fn a_stop_for_priority_that_does_not_outrank_its_victim_is_refused() {
    let mut h = Harness::new(two_teams(1, 4, 4));
    let victim = h.submit(JobBuilder::new("a").gpus(4).priority(1));
    h.step();
    let equal = h.submit(JobBuilder::new("a").gpus(4).priority(1));
    let other = h.submit(JobBuilder::new("b").gpus(4).priority(9));
    let higher = h.submit(JobBuilder::new("a").gpus(4).priority(2));
    let before = h.state.clone();
    let stop = |beneficiary| Event::Stop {
        job: victim,
        cause: StopCause::Priority,
        beneficiary,
        at_s: 0,
    };
    for b in [Some(equal), Some(other), None] {
        let err = apply(&mut h.state, stop(b)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::NotOutranked {
                victim,
                beneficiary: b
            }
        );
        assert_eq!(h.state, before);
    }
    assert!(apply(&mut h.state, stop(Some(equal)))
        .unwrap_err()
        .to_string()
        .contains("must belong to"));
    apply(&mut h.state, stop(Some(higher))).unwrap();
}
