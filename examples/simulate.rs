//! Compares placement strategies on seeded traces and prints a table per
//! host: memory locality (distance-weighted, 1 = all local), share of
//! guests that fit one node but span several, node CPU and memory
//! imbalance (most minus least busy node, averaged over the run), moves of
//! running domains and GiB of memory migrated.
//!
//! ```sh
//! cargo run --release --example simulate            # seed 1
//! cargo run --release --example simulate -- 42      # another seed
//! ```

use numapin::simulate::{Metrics, SimConfig, Strategy, TraceShape, compare, simulate, trace};
use numapin::synth::HostShape;

fn hosts() -> Vec<(&'static str, HostShape)> {
    let mut four = HostShape::new(4, 8, 2, 64 * 1024);
    four.nodes_per_socket = 2;
    let mut eight = HostShape::new(8, 8, 2, 64 * 1024);
    eight.nodes_per_socket = 4;
    vec![
        (
            "2 nodes / 80 CPUs, 192 GiB per node",
            HostShape::new(2, 20, 2, 192 * 1024),
        ),
        ("4 nodes / 64 CPUs, 64 GiB per node (2 per socket)", four),
        ("8 nodes / 128 CPUs, 64 GiB per node (4 per socket)", eight),
    ]
}

fn main() {
    let seed: u64 = match std::env::args().nth(1) {
        None => 1,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("usage: simulate [SEED]");
            std::process::exit(64)
        }),
    };
    let config = SimConfig::default();
    let shape = TraceShape::default();
    println!(
        "seed {seed}; {} h trace, memory {:.0}% subscribed on average, mean lifetime {} min; \
         migration {} MiB/s; numapin every {} s; metrics averaged after {} s\n",
        shape.duration_s / 3600,
        shape.memory_fill * 100.0,
        shape.mean_lifetime_s / 60,
        config.migrate_mib_per_s,
        config.numapin_interval_s,
        config.warm_up_s,
    );
    for (label, host) in hosts() {
        let topo = host.build();
        let t = trace::generate(&topo, &shape, seed);
        let arrivals = t
            .events
            .iter()
            .filter(|e| matches!(e.event, trace::Event::Arrive { .. }))
            .count();
        println!("{label}: {arrivals} domains\n");
        println!(
            "| strategy | locality | spanning | imbalance | CPU imbalance | memory imbalance | moves | GiB migrated |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (s, m) in compare(&topo, &t, &config) {
            print_row(s.label(), &m);
        }
        let mut coarser = config.clone();
        coarser.planner.planner.min_gain = 0.1;
        let m = simulate(&topo, &t, Strategy::Numapin, &coarser);
        print_row("numapin, min_gain 0.1", &m);
        println!();
    }
}

fn print_row(label: &str, m: &Metrics) {
    println!(
        "| {label} | {:.3} | {:.1}% | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
        m.locality,
        m.spanning * 100.0,
        m.imbalance,
        m.cpu_imbalance,
        m.mem_imbalance,
        m.moves,
        m.migrated_gib
    );
}
