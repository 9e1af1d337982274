//! Planner speed on the three benchmark hosts with 10, 100 and 1,000
//! domains each (seeded mixed fleets from `numapin::synth`).
//!
//! `cargo bench --bench planner`; `examples/bench_report.rs` prints the
//! same cases as a table with allocation counts.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use numapin::config::Config;
use numapin::planner::{PlanInput, plan};
use numapin::synth::{bench_hosts, mixed_fleet};

const SEED: u64 = 0x6e75_6d61;

fn planner(c: &mut Criterion) {
    let config = Config::default();
    let mut group = c.benchmark_group("plan");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for host in bench_hosts() {
        let topo = host.shape.build();
        let id = format!("{}n-{}c", topo.nodes.len(), topo.cpus.len());
        for count in [10, 100, 1000] {
            let fleet = mixed_fleet(&topo, count, SEED);
            let input = PlanInput {
                topology: &topo,
                domains: &fleet.domains,
                observations: &fleet.observations,
                config: &config,
                rebalance_all: false,
                confirm: None,
            };
            group.bench_with_input(BenchmarkId::new(&id, count), &input, |b, input| {
                b.iter(|| plan(black_box(input)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
