//! A mutation fuzzer for every reader, on the stable toolchain.
//!
//! ```sh
//! cargo run --locked --example fuzz -- --seconds 90 [--seed 1]
//! ```
//!
//! Seeds are the reader fixtures (tests/data) and the demo snapshot
//! (examples/demo). Each input is a seed changed one to four times (bytes
//! flipped, ranges cut or repeated, numbers and tokens that have broken
//! readers before put in) by a seeded RNG, so a run is reproducible from its
//! seed. Each reader gets an equal share of the time. An input fails when
//! its reader panics, or when it takes more than 1 s or allocates more than
//! 256 MiB at its peak (inputs are under 64 KiB). Memory is counted by this
//! binary's global allocator, which also refuses to go past 1 GiB so a
//! runaway input aborts the run instead of the machine. A domain that
//! parses is also planned on the demo host, and observations and configs
//! are checked against it, so the bounds cover what the plan builds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use numapin::config::Config;
use numapin::guest::domain_xml;
use numapin::observations::{Observations, check};
use numapin::planner::{self, DomainInput, PlanInput};
use numapin::snapshot::{self, Snapshot};
use numapin::topology::{capabilities, sysfs};

const TIME_LIMIT: Duration = Duration::from_secs(1);
const MEMORY_LIMIT: usize = 256 << 20;
/// Past this the allocator fails, which aborts the process.
const HARD_LIMIT: usize = 1 << 30;
const MAX_INPUT: usize = 64 << 10;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > HARD_LIMIT {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that broke readers before, or sit on a boundary.
const TOKENS: &[&str] = &[
    "0",
    "1",
    "-1",
    "10",
    "9",
    "255",
    "4096",
    "4097",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "17592186044416",
    "0-65535",
    "3-1",
    "^0",
    "0,,1",
    "1e9",
    "NaN",
    "inf",
    ",",
    "-",
    "'",
    "\"",
    "<",
    ">",
    "</",
    "=",
    "[",
    "]",
    "{",
    "}",
    "\n",
    "\u{0}",
    "\u{feff}",
    "unit='EiB'",
    "unit='b'",
    "unit='furlong'",
    "cpuset='0-65535'",
    "nodeset='5'",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let end = (at + 1 + rng.below(64)).min(len);
                data.drain(at.min(end)..end);
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(256)).min(len);
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            3 => {
                // Replace the number at a random digit with a token.
                let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(rng.below(digits.len())) {
                    let end = (i..len).find(|&j| !data[j].is_ascii_digit()).unwrap_or(len);
                    let token = TOKENS[rng.below(TOKENS.len())].as_bytes().to_vec();
                    data.splice(i..end, token);
                }
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes().to_vec();
                data.splice(at..at, token);
            }
        }
    }
    data.truncate(MAX_INPUT);
    data
}

struct Stats {
    name: &'static str,
    inputs: u64,
    accepted: u64,
    slowest: Duration,
    peak: usize,
    failures: Vec<String>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The demo host, what observations and configs are checked against and
/// domains are planned on.
struct Host {
    snap: Snapshot,
    config: Config,
}

impl Host {
    fn plan(&self, domains: &[DomainInput], obs: &Observations) {
        let plan = planner::plan(&PlanInput {
            topology: &self.snap.topology,
            domains,
            observations: obs,
            config: &self.config,
            rebalance_all: false,
            confirm: None,
        });
        std::hint::black_box(plan);
    }
}

type Reader<'a> = Box<dyn Fn(&[u8]) -> bool + 'a>;

fn readers<'a>(host: &'a Host, sysfs_root: &'a Path) -> Vec<(&'static str, Reader<'a>)> {
    vec![
        (
            "capabilities",
            Box::new(|b: &[u8]| capabilities::parse(&text(b)).is_ok()),
        ),
        (
            "domain XML",
            Box::new(|b: &[u8]| match domain_xml::parse(&text(b)) {
                Ok(d) => {
                    host.plan(&[DomainInput::new(d, None)], &host.snap.observations);
                    true
                }
                Err(_) => false,
            }),
        ),
        (
            "observations",
            Box::new(|b: &[u8]| {
                let Ok(obs) = Observations::from_toml(&text(b), Path::new("fuzz")) else {
                    return false;
                };
                let by_name = host
                    .snap
                    .domains
                    .iter()
                    .map(|d| (d.live.name.as_str(), &d.live))
                    .collect();
                if check::check(&obs, &host.snap.topology, &by_name).is_err() {
                    return false;
                }
                host.plan(&host.snap.domains, &obs);
                true
            }),
        ),
        (
            "config",
            Box::new(|b: &[u8]| {
                Config::from_toml(&text(b), Path::new("fuzz"))
                    .is_ok_and(|c| c.validate_for_host(&host.snap.topology).is_ok())
            }),
        ),
        (
            "sysfs tree",
            Box::new(move |b: &[u8]| {
                // The mutated bytes land in one file of the tree, chosen by
                // the input's own first byte; the tree is restored after.
                let files = tree_files(sysfs_root);
                let target = &files[b.first().map_or(0, |&x| x as usize) % files.len()];
                let original = std::fs::read(target).unwrap();
                std::fs::write(target, b.get(1..).unwrap_or_default()).unwrap();
                let ok =
                    sysfs::read(sysfs_root).is_ok() && sysfs::read_node_memory(sysfs_root).is_ok();
                std::fs::write(target, original).unwrap();
                ok
            }),
        ),
    ]
}

fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                dirs.push(path);
            } else if t.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn seeds(dirs: &[&str], ext: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in dirs {
        let path = root.join(dir);
        if path.is_file() {
            out.push(std::fs::read(&path).unwrap());
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        out.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for file in tree_files(from) {
        let dest = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let seconds = value("--seconds", 60);
    let seed = value("--seed", 1);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let host = Host {
        snap: snapshot::load(&root.join("examples/demo")).expect("the demo snapshot loads"),
        config: Config::default(),
    };
    let tree = tempfile::tempdir().unwrap();
    copy_tree(&root.join("tests/data/sysfs/this-machine"), tree.path());
    // Each reader's first byte picks the file; seeds are those files, so
    // a seed is also a valid input.
    let tree_seeds: Vec<Vec<u8>> = tree_files(tree.path())
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut b = vec![i as u8];
            b.extend(std::fs::read(f).unwrap());
            b
        })
        .collect();
    let corpora = [
        seeds(
            &["tests/data/caps", "examples/demo/capabilities.xml"],
            "xml",
        ),
        seeds(&["tests/data/domains", "examples/demo/domains"], "xml"),
        seeds(&["examples/demo/observations.toml"], "toml"),
        seeds(&["config/numapin.toml"], "toml"),
        tree_seeds,
    ];

    // A panic is caught and counted; its message would only clutter.
    std::panic::set_hook(Box::new(|_| {}));
    let readers = readers(&host, tree.path());
    let share = Duration::from_secs(seconds) / readers.len() as u32;
    let mut rng = Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut all = Vec::new();
    for ((name, read), corpus) in readers.iter().zip(&corpora) {
        let mut stats = Stats {
            name,
            inputs: 0,
            accepted: 0,
            slowest: Duration::ZERO,
            peak: 0,
            failures: Vec::new(),
        };
        let end = Instant::now() + share;
        while Instant::now() < end {
            let pick = rng.below(corpus.len());
            let input = mutate(&mut rng, &corpus[pick]);
            let base = CURRENT.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let start = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| read(&input)));
            let took = start.elapsed();
            let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
            stats.inputs += 1;
            stats.slowest = stats.slowest.max(took);
            stats.peak = stats.peak.max(peak);
            let why = match result {
                Err(_) => Some("panicked".to_string()),
                Ok(_) if took > TIME_LIMIT => Some(format!("took {took:?}")),
                Ok(_) if peak > MEMORY_LIMIT => Some(format!("allocated {} MiB", peak >> 20)),
                Ok(accepted) => {
                    stats.accepted += u64::from(accepted);
                    None
                }
            };
            if let Some(why) = why {
                let dir = root.join("target/fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("{}-{}", name.replace(' ', "-"), stats.inputs));
                std::fs::write(&file, &input).unwrap();
                stats.failures.push(format!("{why}: {}", file.display()));
            }
        }
        println!(
            "fuzz: {:<13} {:>7} inputs, {:>6} accepted, slowest {:>7.1} ms, peak {:>6.1} MiB, {} failures",
            stats.name,
            stats.inputs,
            stats.accepted,
            stats.slowest.as_secs_f64() * 1000.0,
            stats.peak as f64 / f64::from(1 << 20),
            stats.failures.len()
        );
        all.push(stats);
    }
    let failures: Vec<&String> = all.iter().flat_map(|s| &s.failures).collect();
    for f in &failures {
        eprintln!("fuzz: FAILED {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
