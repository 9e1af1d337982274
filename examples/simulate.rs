//! Compares placement strategies on seeded traces and prints a table per
//! host: memory locality (distance-weighted, 1 = all local), share of
//! guests that fit one node but span several, node CPU and memory
//! imbalance (most minus least busy node, averaged over the run), moves of
//! running domains and GiB of memory migrated.
//!
//! With `--seeds`, every host and strategy runs once per seed and the
//! tables summarise the seeds: mean and median per strategy; for numapin,
//! per metric, the seeds where it is better than, tied with or worse than
//! each baseline; and the mean per-seed difference from numad's periodic
//! rebalancing with a 95% t interval.
//!
//! ```sh
//! cargo run --release --example simulate                     # seed 1
//! cargo run --release --example simulate -- 42               # another seed
//! cargo run --release --example simulate -- --seeds 1-20     # seeds 1 to 20
//! cargo run --release --example simulate -- --seeds 1-5,9 --jobs 1
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use numapin::simulate::{Metrics, SimConfig, Strategy, TraceShape, compare, simulate, trace};
use numapin::synth::HostShape;

/// numapin with other `min_gain`s, after the default config: a coarser
/// threshold (fewer moves), and one that rebalances at almost any gap (how
/// even bound guests can be kept at all, and what that migrates).
const VARIANTS: [(&str, f64); 2] = [
    ("numapin, min_gain 0.1", 0.1),
    ("numapin, min_gain 0.01", 0.01),
];

fn variant(config: &SimConfig, min_gain: f64) -> SimConfig {
    let mut c = config.clone();
    c.planner.planner.min_gain = min_gain;
    c
}

const USAGE: &str = "usage: simulate [SEED] | simulate --seeds FIRST-LAST[,SEED...] [--jobs N]";

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Mode::One(seed)) => one_seed(seed),
        Ok(Mode::Seeds { seeds, jobs }) => many_seeds(&seeds, jobs),
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(64)
        }
    }
}

enum Mode {
    One(u64),
    Seeds { seeds: Vec<u64>, jobs: usize },
}

fn parse(args: &[String]) -> Result<Mode, String> {
    let number = |s: &str| s.parse::<u64>().map_err(|_| format!("not a seed: {s:?}"));
    let (mut seeds, mut jobs) = (None, 2);
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
                seeds = Some(all);
            }
            "--jobs" => {
                let n = it.next().ok_or("--jobs needs a number")?;
                jobs = n
                    .parse()
                    .ok()
                    .filter(|&j| j > 0)
                    .ok_or(format!("not a number of jobs: {n:?}"))?;
            }
            s if args.len() == 1 => return Ok(Mode::One(number(s)?)),
            s => return Err(format!("unexpected argument: {s:?}")),
        }
    }
    Ok(match seeds {
        Some(seeds) => Mode::Seeds { seeds, jobs },
        None => Mode::One(1),
    })
}

fn print_setup(seeds: &str) {
    let config = SimConfig::default();
    let shape = TraceShape::default();
    println!(
        "{seeds}; {} h trace, memory {:.0}% subscribed on average, mean lifetime {} min; \
         migration {} MiB/s; numapin every {} s; metrics averaged after {} s\n",
        shape.duration_s / 3600,
        shape.memory_fill * 100.0,
        shape.mean_lifetime_s / 60,
        config.migrate_mib_per_s,
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
    for (label, host) in hosts() {
        let topo = host.build();
        let t = trace::generate(&topo, &TraceShape::default(), seed);
        println!("{label}: {} domains\n", arrivals(&t));
        println!(
            "| strategy | locality | spanning | imbalance | CPU imbalance | memory imbalance | moves | GiB migrated |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (s, m) in compare(&topo, &t, &config) {
            print_row(s.label(), &m);
        }
        for (label, min_gain) in VARIANTS {
            let m = simulate(&topo, &t, Strategy::Numapin, &variant(&config, min_gain));
            print_row(label, &m);
        }
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

/// One host and seed: domains that arrived and each strategy's metrics,
/// in `Strategy::ALL` order, then numapin's [`VARIANTS`].
type Run = (usize, Vec<Metrics>);

/// Runs every host on every seed, `jobs` runs at a time; results by host,
/// then seed, whatever order they finish in.
fn run_all(seeds: &[u64], jobs: usize) -> Vec<Vec<Run>> {
    let work = hosts().len() * seeds.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results = Mutex::new(vec![None; work]);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(work) {
            scope.spawn(|| {
                let config = SimConfig::default();
                let variants: Vec<SimConfig> =
                    VARIANTS.iter().map(|v| variant(&config, v.1)).collect();
                let hosts = hosts();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= work {
                        break;
                    }
                    let (h, seed) = (i / seeds.len(), seeds[i % seeds.len()]);
                    let topo = hosts[h].1.build();
                    let t = trace::generate(&topo, &TraceShape::default(), seed);
                    let mut metrics: Vec<Metrics> = compare(&topo, &t, &config)
                        .into_iter()
                        .map(|(_, m)| m)
                        .collect();
                    for v in &variants {
                        metrics.push(simulate(&topo, &t, Strategy::Numapin, v));
                    }
                    let run = (arrivals(&t), metrics);
                    results.lock().expect("no worker panicked")[i] = Some(run);
                    eprintln!(
                        "[{}/{}] {:.0} s: {}, seed {seed}",
                        done.fetch_add(1, Ordering::Relaxed) + 1,
                        work,
                        start.elapsed().as_secs_f64(),
                        hosts[h].0,
                    );
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("no worker panicked")
        .into_iter();
    (0..hosts().len())
        .map(|_| {
            (&mut results)
                .take(seeds.len())
                .map(|r| r.expect("every run done"))
                .collect()
        })
        .collect()
}

/// A metric the seeds are summarised on.
struct Measure {
    name: &'static str,
    get: fn(&Metrics) -> f64,
    /// Smaller is better (else larger).
    lower_is_better: bool,
    /// Two runs within this of each other are a tie, said so.
    tie: f64,
    tie_text: &'static str,
    /// Prints a value; `signed` for differences.
    show: fn(f64, bool) -> String,
}

/// `v` with `decimals` decimals, signed for a difference.
fn num(v: f64, signed: bool, decimals: usize) -> String {
    if v.is_nan() {
        return "n/a".to_owned();
    }
    // No "-0.0000" for a difference that rounds to zero.
    let v = if (v * 10f64.powi(decimals as i32)).round() == 0.0 {
        0.0
    } else {
        v
    };
    if signed && v != 0.0 {
        format!("{v:+.decimals$}")
    } else {
        format!("{v:.decimals$}")
    }
}

const MEASURES: [Measure; 5] = [
    Measure {
        name: "locality",
        get: |m| m.locality,
        lower_is_better: false,
        tie: 0.001,
        tie_text: "within 0.001",
        show: |v, s| num(v, s, 4),
    },
    Measure {
        name: "spanning",
        get: |m| m.spanning * 100.0,
        lower_is_better: true,
        tie: 0.5,
        tie_text: "within 0.5 points",
        show: |v, s| num(v, s, 1) + "%",
    },
    Measure {
        name: "imbalance",
        get: |m| m.imbalance,
        lower_is_better: true,
        tie: 0.002,
        tie_text: "within 0.002",
        show: |v, s| num(v, s, 4),
    },
    Measure {
        name: "GiB migrated",
        get: |m| m.migrated_gib,
        lower_is_better: true,
        tie: 1.0,
        tie_text: "within 1 GiB",
        show: |v, s| num(v, s, 1),
    },
    Measure {
        name: "moves",
        get: |m| m.moves as f64,
        lower_is_better: true,
        tie: 0.0,
        tie_text: "equal",
        show: |v, s| num(v, s, 1),
    },
];

/// Better, tied or worse for numapin, from the difference numapin minus
/// the other.
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Better,
    Tied,
    Worse,
}

impl Measure {
    fn outcome(&self, numapin: f64, other: f64) -> Outcome {
        let d = numapin - other;
        if d.abs() <= self.tie {
            Outcome::Tied
        } else if (d < 0.0) == self.lower_is_better {
            Outcome::Better
        } else {
            Outcome::Worse
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom; for
/// df between the tabulated ones, that of the next lower (wider).
fn t_975(df: usize) -> f64 {
    const SMALL: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => SMALL[df - 1],
        31..=39 => 2.042,
        40..=59 => 2.021,
        60..=119 => 2.000,
        120.. => 1.980,
    }
}

/// Mean of `d` and the half-width of its 95% t interval (NaN for fewer
/// than two values).
fn mean_interval(d: &[f64]) -> (f64, f64) {
    let n = d.len();
    let m = mean(d);
    if n < 2 {
        return (m, f64::NAN);
    }
    let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (m, t_975(n - 1) * (var / n as f64).sqrt())
}

fn seed_list(seeds: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seeds.len() {
        let mut j = i;
        while j + 1 < seeds.len() && seeds[j + 1] == seeds[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", seeds[i], seeds[j])
        } else {
            seeds[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

fn many_seeds(seeds: &[u64], jobs: usize) {
    let runs = run_all(seeds, jobs);
    let n = seeds.len();
    print_setup(&format!("seeds {} ({n})", seed_list(seeds)));
    let ties: Vec<String> = MEASURES
        .iter()
        .map(|m| format!("{} {}", m.name, m.tie_text))
        .collect();
    println!(
        "Comparisons are of numapin with the default config. Ties: {}. Differences are \
         numapin minus the baseline, per seed; the interval is their mean ± t(0.975, n - 1) \
         x standard deviation / √n.\n",
        ties.join(", ")
    );
    let numapin = Strategy::ALL.len() - 1;
    let mut rows: Vec<&str> = Strategy::ALL.iter().map(|s| s.label()).collect();
    rows.extend(VARIANTS.iter().map(|v| v.0));
    let periodic = Strategy::ALL
        .iter()
        .position(|&s| s == Strategy::NumadPeriodic)
        .expect("a strategy");
    for ((label, _), runs) in hosts().iter().zip(&runs) {
        let domains: Vec<usize> = runs.iter().map(|r| r.0).collect();
        let (fewest, most) = (domains.iter().min(), domains.iter().max());
        // values[strategy][measure][seed]
        let values: Vec<Vec<Vec<f64>>> = (0..rows.len())
            .map(|s| {
                MEASURES
                    .iter()
                    .map(|m| runs.iter().map(|r| (m.get)(&r.1[s])).collect())
                    .collect()
            })
            .collect();
        let total: usize = domains.iter().sum();
        println!(
            "{label}: {}-{} domains a seed (mean {:.1})\n",
            fewest.expect("seeds"),
            most.expect("seeds"),
            total as f64 / n as f64,
        );

        print!("| strategy (mean / median) |");
        for m in &MEASURES {
            print!(" {} |", m.name);
        }
        println!("\n| --- |{}", " ---: |".repeat(MEASURES.len()));
        for (s, row) in rows.iter().enumerate() {
            print!("| {row} |");
            for (k, m) in MEASURES.iter().enumerate() {
                let v = &values[s][k];
                print!(
                    " {} / {} |",
                    (m.show)(mean(v), false),
                    (m.show)(median(v), false)
                );
            }
            println!();
        }
        println!();

        print!("| numapin against (seeds better / tied / worse) |");
        for s in &Strategy::ALL[..numapin] {
            print!(" {} |", s.label());
        }
        println!("\n| --- |{}", " ---: |".repeat(numapin));
        for (k, m) in MEASURES.iter().enumerate() {
            print!("| {} ({}) |", m.name, m.tie_text);
            for b in 0..numapin {
                let count = |o: Outcome| {
                    (0..n)
                        .filter(|&i| m.outcome(values[numapin][k][i], values[b][k][i]) == o)
                        .count()
                };
                print!(
                    " {} / {} / {} |",
                    count(Outcome::Better),
                    count(Outcome::Tied),
                    count(Outcome::Worse)
                );
            }
            println!();
        }
        println!();

        println!(
            "| against numad periodic | numad periodic mean | numapin mean | mean difference | 95% interval | seeds worse (difference) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | --- |");
        for (k, m) in MEASURES.iter().enumerate() {
            if !matches!(m.name, "locality" | "imbalance" | "GiB migrated") {
                continue;
            }
            let (ours, theirs) = (&values[numapin][k], &values[periodic][k]);
            let d: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a - b).collect();
            let (md, half) = mean_interval(&d);
            let worse: Vec<String> = (0..n)
                .filter(|&i| m.outcome(ours[i], theirs[i]) == Outcome::Worse)
                .map(|i| format!("{} ({})", seeds[i], (m.show)(d[i], true)))
                .collect();
            let interval = if half.is_nan() {
                "n/a".to_owned()
            } else {
                format!(
                    "{} to {}",
                    (m.show)(md - half, true),
                    (m.show)(md + half, true)
                )
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                m.name,
                (m.show)(mean(theirs), false),
                (m.show)(mean(ours), false),
                (m.show)(md, true),
                interval,
                if worse.is_empty() {
                    "none".to_owned()
                } else {
                    worse.join(", ")
                },
            );
        }
        println!();
        print_tradeoff(seeds, &rows, &values, periodic);
    }
}

/// Per numapin config, the seeds where it is worse on imbalance than no
/// pinning and than numad periodic, and migrates more than numad periodic:
/// what a lower or higher `min_gain` trades.
fn print_tradeoff(seeds: &[u64], rows: &[&str], values: &[Vec<Vec<f64>>], periodic: usize) {
    let measure = |name: &str| {
        MEASURES
            .iter()
            .position(|m| m.name == name)
            .expect("a measure")
    };
    let (imbalance, gib) = (measure("imbalance"), measure("GiB migrated"));
    let no_pinning = Strategy::ALL
        .iter()
        .position(|&s| s == Strategy::NoPinning)
        .expect("a strategy");
    let worse = |row: usize, k: usize, base: usize| {
        let m = &MEASURES[k];
        let list: Vec<String> = (0..seeds.len())
            .filter(|&i| m.outcome(values[row][k][i], values[base][k][i]) == Outcome::Worse)
            .map(|i| seeds[i].to_string())
            .collect();
        match list.len() {
            0 => "none".to_owned(),
            c => format!("{c}: {}", list.join(", ")),
        }
    };
    println!(
        "| seeds where numapin is worse | imbalance, against no pinning | imbalance, against numad periodic | GiB migrated, against numad periodic |"
    );
    println!("| --- | --- | --- | --- |");
    for (row, label) in rows.iter().enumerate().skip(Strategy::ALL.len() - 1) {
        println!(
            "| {label} | {} | {} | {} |",
            worse(row, imbalance, no_pinning),
            worse(row, imbalance, periodic),
            worse(row, gib, periodic),
        );
    }
    println!();
}
