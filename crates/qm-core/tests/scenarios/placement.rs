//! Placement: gangs packed by topology, single tasks by best fit, shares, models and labels.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, NodeBuilder};
use qm_core::*;

#[test]
fn gangs_are_packed_into_the_fewest_racks_and_nodes() {
    let state = ClusterBuilder::new().racks(2, 4, 8).team("a", 64).build();
    let mut h = Harness::new(state);
    // Occupy 3 nodes of rack-0 and 1 node of rack-1 completely: five whole-node jobs fill
    // rack-0 and one node of rack-1, then one of rack-0's ends.
    let fillers: Vec<JobId> = (0..5)
        .map(|_| h.submit(JobBuilder::new("a").gpus(8).limit(10_000).grace(0)))
        .collect();
    h.step();
    let nodes_in = |h: &Harness, job: JobId| -> Vec<String> {
        let run = h.state_of(job).run().unwrap();
        run.placement
            .iter()
            .map(|t| h.state.node(t.node).unwrap().spec.topology[1].clone())
            .collect()
    };
    let racks: Vec<String> = fillers.iter().flat_map(|&j| nodes_in(&h, j)).collect();
    assert_eq!(racks, ["rack-0", "rack-0", "rack-0", "rack-0", "rack-1"]);
    let at_s = h.now;
    apply(
        &mut h.state,
        Event::Cancel {
            job: fillers[0],
            at_s,
            unmet: None,
        },
    )
    .unwrap();
    h.reap();
    // A 16-GPU gang fits rack-1 (3 free nodes), not rack-0 (1 free node).
    let gang = h.submit(JobBuilder::new("a").gpus(8).tasks(2));
    h.step();
    assert_eq!(nodes_in(&h, gang), ["rack-1", "rack-1"]);
    // A 4-task gang of 1 GPU lands on a single node.
    let small = h.submit(JobBuilder::new("a").tasks(4));
    h.step();
    let run = h.state_of(small).run().unwrap();
    assert!(run
        .placement
        .iter()
        .all(|t| t.node == run.placement[0].node));
}

#[test]
fn single_tasks_fill_partly_used_nodes_first() {
    let state = ClusterBuilder::new().racks(1, 2, 8).team("a", 16).build();
    let mut h = Harness::new(state);
    let first = h.submit(JobBuilder::new("a").gpus(3));
    h.step();
    let second = h.submit(JobBuilder::new("a").gpus(2));
    h.step();
    let node = |j| h.state_of(j).run().unwrap().placement[0].node;
    assert_eq!(node(first), node(second));
    // One node stays whole for an 8-GPU job.
    let whole = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    assert!(h.is_running(whole));
}

#[test]
fn fractional_tasks_share_gpus_and_leave_whole_ones_free() {
    let state = ClusterBuilder::new().racks(1, 1, 8).team("a", 8).build();
    let mut h = Harness::new(state);
    let quarter: Vec<JobId> = (0..4)
        .map(|_| h.submit(JobBuilder::new("a").milli(250)))
        .collect();
    h.step();
    let gpus: Vec<u32> = quarter
        .iter()
        .map(|&j| h.state_of(j).run().unwrap().placement[0].gpus[0])
        .collect();
    assert!(
        gpus.iter().all(|&g| g == gpus[0]),
        "quarters share one GPU: {gpus:?}"
    );
    let node = h.state.nodes().next().unwrap();
    assert_eq!(node.whole_gpus_free(), 7);
    let big = h.submit(JobBuilder::new("a").milli(600));
    let small = h.submit(JobBuilder::new("a").milli(400));
    h.step();
    let g = |j| h.state_of(j).run().unwrap().placement[0].gpus[0];
    assert_eq!(g(big), g(small), "600 + 400 fill one GPU exactly");
    assert_eq!(h.state.nodes().next().unwrap().whole_gpus_free(), 6);
}

#[test]
fn gpu_models_and_labels_steer_placement() {
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).model("A100"))
        .node(NodeBuilder::new(8).model("H100").label("zone", "west"))
        .team("a", 16)
        .build();
    let mut h = Harness::new(state);
    let a100 = h.submit(JobBuilder::new("a").model("A100"));
    let west = h.submit(JobBuilder::new("a").selector("zone", "west"));
    h.step();
    let model = |j| {
        let n = h.state_of(j).run().unwrap().placement[0].node;
        h.state.node(n).unwrap().spec.gpu_model.clone()
    };
    assert_eq!(model(a100), "A100");
    assert_eq!(model(west), "H100");
}

/// A node that registers again in another rack is packed by its new rack at the next plan
/// (plans keep the nodes' topology with the state until a node registers).
#[test]
fn a_node_moved_to_another_rack_is_packed_by_its_new_rack() {
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).topology(&["dc", "rack-a"]))
        .node(NodeBuilder::new(8).topology(&["dc", "rack-a"]))
        .node(NodeBuilder::new(8).topology(&["dc", "rack-b"]))
        .node(NodeBuilder::new(8).topology(&["dc", "rack-b"]))
        .team("a", 32)
        .build();
    let mut h = Harness::new(state);
    h.step();
    // Nodes 1 and 2 swap racks.
    let ids: Vec<NodeId> = h.state.nodes().map(|n| n.spec.id).collect();
    for (i, rack) in [(1, "rack-b"), (2, "rack-a")] {
        let mut spec = h.state.node(ids[i]).unwrap().spec.clone();
        spec.topology = vec!["dc".to_string(), rack.to_string()];
        apply(&mut h.state, Event::NodeUp(spec)).expect("node re-registers");
    }
    // Node 0 busy: a gang of two whole nodes fits one rack only as nodes 1 and 3 now.
    h.submit(JobBuilder::new("a").gpus(8).limit(10_000));
    h.step();
    h.now = 1;
    h.submit(JobBuilder::new("a").gpus(8).tasks(2).limit(1_000));
    let plan = h.step();
    assert_eq!(plan.starts.len(), 1);
    let mut nodes: Vec<NodeId> = plan.starts[0].placement.iter().map(|t| t.node).collect();
    nodes.sort();
    assert_eq!(nodes, [ids[1], ids[3]], "both tasks in rack-b");
}

#[test]
fn a_single_task_joins_runs_that_outlast_it_so_that_short_work_leaves_nodes_whole() {
    let state = ClusterBuilder::new().racks(1, 2, 8).team("a", 16).build();
    let mut h = Harness::new(state);
    let node = |h: &Harness, job| h.state_of(job).run().unwrap().placement[0].node;
    let short = h.submit(JobBuilder::new("a").gpus(5).limit(3_600));
    h.step();
    let long = h.submit(JobBuilder::new("a").gpus(5).limit(864_000));
    h.step();
    let short_node = node(&h, short);
    assert!(
        short_node < node(&h, long),
        "the short run holds the first node"
    );
    // Both nodes have 3 GPUs free, equally good by fit and fragmentation: a long task goes
    // where it keeps the node busy no longer than it already is, not to the first node.
    let long_task = h.submit(JobBuilder::new("a").gpus(1).limit(864_000));
    h.step();
    assert_eq!(node(&h, long_task), node(&h, long));
    // When the short run ends, its node is whole again for an 8-GPU job.
    h.exit(short, true);
    let whole = h.submit(JobBuilder::new("a").gpus(8).limit(3_600));
    h.step();
    assert!(h.is_running(whole));
    assert_eq!(node(&h, whole), short_node);
}
