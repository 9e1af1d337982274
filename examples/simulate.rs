//! Compares placement strategies on seeded traces by the guests' modelled
//! speed (and locality, spanning, imbalance, moves, GiB migrated).
//!
//! Without `--seeds`, one table per host for one seed. With `--seeds`,
//! every host and strategy runs once per seed; per host: mean and median
//! per strategy, the mean speed with every guest's memory-boundness `m`
//! fixed from 0 to 1, and issue 15's bar judged per seed
//! (`numapin::simulate::report`); then the busy-host start, numapin and
//! numad's daemon taking over hosts whose guests run unpinned. `--plot
//! DIR` also writes the charts of docs/SIMULATION.md there.
//!
//! ```sh
//! cargo run --release --example simulate                     # seed 1
//! cargo run --release --example simulate -- 42               # another seed
//! cargo run --release --example simulate -- --seeds 1-20     # seeds 1 to 20
//! cargo run --release --example simulate -- --seeds 1-20 --plot docs
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use numapin::simulate::converge::{self, Convergence};
use numapin::simulate::report::HostRuns;
use numapin::simulate::stats::{median, seed_list};
use numapin::simulate::trace::Fleet;
use numapin::simulate::{
    Metrics, SimConfig, Strategy, TraceShape, compare, plot, run, simulate, speed, trace,
};
use numapin::synth::HostShape;

/// numapin with other `min_gain`s (one-seed tables only).
const VARIANTS: [(&str, f64); 2] = [
    ("numapin, min_gain 0.1", 0.1),
    ("numapin, min_gain 0.01", 0.01),
];

const USAGE: &str =
    "usage: simulate [SEED] | simulate --seeds FIRST-LAST[,SEED...] [--jobs N] [--plot DIR]";

/// A busy-host start runs this long.
const HORIZON_S: u64 = 3600;

struct Host {
    label: &'static str,
    shape: HostShape,
    fleet: Fleet,
    /// Issue 15's bar is set on these hosts.
    bar: bool,
}

fn hosts() -> Vec<Host> {
    let mut four = HostShape::new(4, 8, 2, 64 * 1024);
    four.nodes_per_socket = 2;
    let mut eight = HostShape::new(8, 8, 2, 64 * 1024);
    eight.nodes_per_socket = 4;
    let mut cxl = HostShape::new(2, 24, 2, 384 * 1024);
    cxl.memory_only_nodes = vec![256 * 1024];
    let mixed = |label, shape| Host {
        label,
        shape,
        fleet: Fleet::Mixed,
        bar: true,
    };
    let production = |label, shape| Host {
        label,
        shape,
        fleet: Fleet::Production,
        bar: false,
    };
    vec![
        mixed(
            "2 nodes / 80 CPUs, 192 GiB per node",
            HostShape::new(2, 20, 2, 192 * 1024),
        ),
        mixed("4 nodes / 64 CPUs, 64 GiB per node (2 per socket)", four),
        mixed("8 nodes / 128 CPUs, 64 GiB per node (4 per socket)", eight),
        production(
            "production fleet: 2 nodes / 96 CPUs, 512 GiB per node",
            HostShape::new(2, 24, 2, 512 * 1024),
        ),
        production(
            "production fleet, CXL: 2 nodes / 96 CPUs, 384 GiB per node, and a 256 GiB memory-only node",
            cxl,
        ),
    ]
}

fn shape(fleet: Fleet) -> TraceShape {
    TraceShape {
        fleet,
        ..TraceShape::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Args { seeds: None, .. }) => one_seed(1),
        Ok(Args {
            seeds: Some(seeds),
            jobs,
            plot,
            one: false,
        }) => many_seeds(&seeds, jobs, plot.as_deref()),
        Ok(Args {
            seeds: Some(seeds), ..
        }) => one_seed(seeds[0]),
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(64)
        }
    }
}

struct Args {
    seeds: Option<Vec<u64>>,
    jobs: usize,
    plot: Option<String>,
    /// A lone seed, not `--seeds`.
    one: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let number = |s: &str| s.parse::<u64>().map_err(|_| format!("not a seed: {s:?}"));
    let mut out = Args {
        seeds: None,
        jobs: 2,
        plot: None,
        one: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => {
                let list = it.next().ok_or("--seeds needs a list")?;
                let mut all = Vec::new();
                for part in list.split(',') {
                    match part.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (number(a)?, number(b)?);
                            if a > b {
                                return Err(format!("empty range: {part:?}"));
                            }
                            all.extend(a..=b)
                        }
                        None => all.push(number(part)?),
                    }
                }
                all.sort_unstable();
                all.dedup();
                out.seeds = Some(all);
            }
            "--jobs" => {
                let n = it.next().ok_or("--jobs needs a number")?;
                out.jobs = n
                    .parse()
                    .ok()
                    .filter(|&j| j > 0)
                    .ok_or(format!("not a number of jobs: {n:?}"))?;
            }
            "--plot" => out.plot = Some(it.next().ok_or("--plot needs a directory")?.clone()),
            s if args.len() == 1 => {
                out.seeds = Some(vec![number(s)?]);
                out.one = true;
            }
            s => return Err(format!("unexpected argument: {s:?}")),
        }
    }
    Ok(out)
}

fn print_setup(seeds: &str) {
    let config = SimConfig::default();
    let shape = TraceShape::default();
    let (lo, hi) = speed::MEMORY_BOUND_RANGE;
    println!(
        "{seeds}; {} h trace, mean lifetime {} min; mixed fleet: memory {:.0}% subscribed on \
         average; production fleet: vCPUs 2.5 per host CPU; m drawn per guest from {lo}-{hi}; \
         SMT sibling {}; {} x SLIT steps of extra latency; numad's migration {} MiB/s, \
         numapin's background mover {} MiB/s; numapin every {} s; metrics averaged after {} s\n",
        shape.duration_s / 3600,
        shape.mean_lifetime_s / 60,
        shape.memory_fill * 100.0,
        speed::SMT_SIBLING_GAIN,
        speed::LATENCY_PER_SLIT,
        config.migrate_mib_per_s,
        config.numapin_migrate_mib_per_s,
        config.numapin_interval_s,
        config.warm_up_s,
    );
}

fn arrivals(t: &trace::Trace) -> usize {
    t.events
        .iter()
        .filter(|e| matches!(e.event, trace::Event::Arrive { .. }))
        .count()
}

fn one_seed(seed: u64) {
    print_setup(&format!("seed {seed}"));
    let config = SimConfig::default();
    for host in hosts() {
        let topo = host.shape.build();
        let t = trace::generate(&topo, &shape(host.fleet), seed);
        println!("{}: {} domains\n", host.label, arrivals(&t));
        println!(
            "| strategy | speed | slowest 5% | locality | spanning | imbalance | CPU imbalance | memory imbalance | moves | GiB migrated |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (s, m) in compare(&topo, &t, &config) {
            print_row(s.label(), &m);
        }
        for (label, min_gain) in VARIANTS {
            let mut c = config.clone();
            c.planner.planner.min_gain = min_gain;
            print_row(label, &simulate(&topo, &t, Strategy::Numapin, &c));
        }
        println!();
    }
}

fn print_row(label: &str, m: &Metrics) {
    println!(
        "| {label} | {:.4} | {:.4} | {:.3} | {:.1}% | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
        m.speed,
        m.slowest_5,
        m.locality,
        m.spanning * 100.0,
        m.imbalance,
        m.cpu_imbalance,
        m.mem_imbalance,
        m.moves,
        m.migrated_gib
    );
}

/// One host and seed: each strategy's metrics in `Strategy::ALL` order,
/// and for the production hosts the busy-host start of numapin and of
/// numad's daemon.
struct Run {
    metrics: Vec<Metrics>,
    busy: Option<[Convergence; 2]>,
}

/// Runs every host on every seed, `jobs` runs at a time; results by host,
/// then seed, whatever order they finish in.
fn run_all(seeds: &[u64], jobs: usize) -> Vec<Vec<Run>> {
    let hosts = hosts();
    let work = hosts.len() * seeds.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Run>>> = Mutex::new((0..work).map(|_| None).collect());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(work) {
            scope.spawn(|| {
                let config = SimConfig::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= work {
                        break;
                    }
                    let (h, seed) = (i / seeds.len(), seeds[i % seeds.len()]);
                    let host = &hosts[h];
                    let topo = host.shape.build();
                    let t = trace::generate(&topo, &shape(host.fleet), seed);
                    let metrics = compare(&topo, &t, &config)
                        .into_iter()
                        .map(|(_, m)| m)
                        .collect();
                    let busy = (host.fleet == Fleet::Production).then(|| {
                        [Strategy::Numapin, Strategy::NumadPeriodic]
                            .map(|s| converge::busy_start(&topo, &t, s, &config, 300, HORIZON_S))
                    });
                    results.lock().expect("no worker panicked")[i] = Some(Run { metrics, busy });
                    eprintln!(
                        "[{}/{}] {:.0} s: {}, seed {seed}",
                        done.fetch_add(1, Ordering::Relaxed) + 1,
                        work,
                        start.elapsed().as_secs_f64(),
                        host.label,
                    );
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("no worker panicked")
        .into_iter();
    (0..hosts.len())
        .map(|_| {
            (&mut results)
                .take(seeds.len())
                .map(|r| r.expect("every run done"))
                .collect()
        })
        .collect()
}

fn many_seeds(seeds: &[u64], jobs: usize, plot_dir: Option<&str>) {
    let runs = run_all(seeds, jobs);
    print_setup(&format!("seeds {} ({})", seed_list(seeds), seeds.len()));
    let mut verdicts = Vec::new();
    for (host, runs) in hosts().iter().zip(&runs) {
        let metrics: Vec<Vec<Metrics>> = runs.iter().map(|r| r.metrics.clone()).collect();
        let h = HostRuns {
            label: host.label,
            seeds,
            runs: &metrics,
        };
        let mut out = String::new();
        println!("### {}\n", host.label);
        h.summary(&mut out);
        h.sweep(&mut out);
        let v = h.bar(&mut out);
        print!("{out}");
        verdicts.push((host.label, host.bar, v));
    }
    println!("### The bar (2, 4 and 8 nodes; production hosts for information)\n");
    println!(
        "| host | mean speed: seeds met | slowest 5%, median seed: against no pinning / at start / periodic | locality: seeds met | migrated: seeds met | bar |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for (label, bar, v) in &verdicts {
        println!(
            "| {label} | {} / {} | {:+.4} / {:+.4} / {:+.4} | {} / {} | {} / {} | {}{} |",
            v.speed_ok,
            v.seeds,
            v.slowest_median_diff[0],
            v.slowest_median_diff[1],
            v.slowest_median_diff[2],
            v.locality_ok,
            v.seeds,
            v.migrated_ok,
            v.seeds,
            if v.met() { "met" } else { "NOT met" },
            if *bar { "" } else { " (information)" },
        );
    }
    println!();
    print_busy_start(seeds, &runs);
    if let Some(dir) = plot_dir {
        write_plots(dir, seeds[0], &runs);
    }
}

fn print_busy_start(seeds: &[u64], runs: &[Vec<Run>]) {
    println!(
        "### Busy-host start\n\nThe first population of each seed's trace runs unpinned, then the strategy takes over (no arrivals, departures or load changes; {} s). Time to confine every guest, time until {:.0}% of the memory is local (on its own cell's nodes, confined guests only), GiB migrated by then. Over seeds: median and largest; \"never\" counts seeds where it did not happen within the time.\n",
        HORIZON_S,
        converge::LOCAL_TARGET * 100.0
    );
    println!(
        "| host | strategy | guests (median) | every guest confined: median / largest s (never) | guests confined at the end (median) | {:.0}% local: median / largest s (never) | local at the end (median) | GiB migrated (median) | moves (median) |",
        converge::LOCAL_TARGET * 100.0
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let time = |v: Vec<Option<u64>>| {
        let got: Vec<f64> = v.iter().flatten().map(|&s| s as f64).collect();
        let never = v.len() - got.len();
        if got.is_empty() {
            format!("never ({never})")
        } else {
            format!(
                "{:.0} / {:.0} ({never})",
                median(&got),
                got.iter().cloned().fold(0.0, f64::max)
            )
        }
    };
    for (host, runs) in hosts().iter().zip(runs) {
        if host.fleet != Fleet::Production {
            continue;
        }
        for (k, label) in ["numapin", "numad periodic"].iter().enumerate() {
            let c: Vec<&Convergence> = runs
                .iter()
                .filter_map(|r| r.busy.as_ref().map(|b| &b[k]))
                .collect();
            let f =
                |g: fn(&Convergence) -> f64| median(&c.iter().map(|x| g(x)).collect::<Vec<_>>());
            println!(
                "| {} | {label} | {:.0} | {} | {:.0} | {} | {:.3} | {:.1} | {:.0} |",
                host.label,
                f(|x| x.guests as f64),
                time(c.iter().map(|x| x.confined_s).collect()),
                f(|x| x.confined_at_end as f64),
                time(c.iter().map(|x| x.local_s).collect()),
                f(|x| x.local_at_end),
                f(|x| x.migrated_gib),
                f(|x| x.moves as f64),
            );
        }
    }
    println!("\n({} seeds: {})\n", seeds.len(), seed_list(seeds));
}

/// Speed over time per strategy for the first seed, on the two-node and
/// eight-node hosts, and the busy-host start of the production host.
fn write_plots(dir: &str, seed: u64, runs: &[Vec<Run>]) {
    let config = SimConfig::default();
    let hosts = hosts();
    for (h, file) in [
        (0, "simulate-speed-2-nodes.svg"),
        (2, "simulate-speed-8-nodes.svg"),
    ] {
        let host = &hosts[h];
        let topo = host.shape.build();
        let t = trace::generate(&topo, &shape(host.fleet), seed);
        let series: Vec<(&str, Vec<(f64, f64)>)> = Strategy::ALL
            .iter()
            .map(|&s| (s.label(), plot::smooth(&run(&topo, &t, s, &config).1, 12)))
            .collect();
        let low = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .fold(1.0, f64::min);
        let svg = plot::line_chart(
            &format!(
                "{}, seed {seed}: mean vCPU speed (1-minute means)",
                host.label
            ),
            "modelled speed",
            (((low - 0.01) * 50.0).floor() / 50.0, 1.0),
            &series,
        );
        save(dir, file, &svg);
    }
    let p = hosts
        .iter()
        .position(|h| h.fleet == Fleet::Production)
        .expect("a production host");
    if let Some(busy) = &runs[p][0].busy {
        let series: Vec<(&str, Vec<(f64, f64)>)> = ["numapin", "numad periodic"]
            .iter()
            .zip(busy)
            .map(|(l, c)| {
                (
                    *l,
                    c.series
                        .iter()
                        .filter(|(s, _)| *s <= 1800)
                        .map(|&(s, v)| (s as f64, v))
                        .collect(),
                )
            })
            .collect();
        let svg = plot::line_chart(
            &format!(
                "Busy-host start, {}, seed {seed}: share of memory local",
                hosts[p].label.split(':').next().unwrap_or("")
            ),
            "memory local",
            (0.0, 1.0),
            &series,
        );
        save(dir, "simulate-busy-start.svg", &svg);
    }
}

fn save(dir: &str, file: &str, svg: &str) {
    let path = std::path::Path::new(dir).join(file);
    if let Err(e) = std::fs::write(&path, svg) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(74);
    }
    eprintln!("wrote {}", path.display());
}
