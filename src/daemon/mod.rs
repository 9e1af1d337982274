//! `numapin run`: the service. Cycles run on an interval and right after
//! libvirt domain events; they never overlap, and bursts of events
//! coalesce into one cycle. Signals: SIGUSR1 rebalances now, SIGHUP
//! reloads the config (an invalid one is reported and the old one kept),
//! SIGTERM/SIGINT finish the transaction in flight and exit 0, a second
//! one exits at once (the journal lets the next start roll back).

pub mod cycle;
pub mod notify;
pub mod pid_file;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::apply::recovery::{self, RecoveryError};
use crate::apply::{self, Journal, JournalError, Placements};
use crate::config::{self, Config, ConfigError};
use crate::libvirt::events::{Event, EventSink};
use crate::libvirt::{self, Libvirt};
use crate::live::{LiveHost, Sampler};
use crate::metrics::{Metrics, MetricsServer};

use cycle::{CycleReport, CycleRequest, Worker};
use notify::Notifier;

/// How long the load of a guest not read before (every guest at the
/// start, then each guest started since the last cycle) is measured
/// before its first placement. A cycle with no such guest does not wait.
const NEW_GUEST_WINDOW: Duration = Duration::from_secs(1);
/// Wait between attempts to roll back unfinished transactions while
/// libvirt is not reachable yet.
const RECOVERY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file given on the command line, if any; reloads read it
    /// (or the default path) again.
    pub config_path: Option<PathBuf>,
    pub dry_run: bool,
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime")]
    Runtime(#[source] std::io::Error),
    #[error("metrics.listen = {listen:?}")]
    Metrics {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why the loop wakes.
#[derive(Debug)]
enum Wake {
    Event(Event),
    Rebalance,
    Reload,
    Stop,
}

/// Reads the config: the file named (which must exist), else the default
/// path when it exists, else built-in defaults. Returns where it came from.
pub fn load_config(path: Option<&Path>) -> Result<(Config, String), ConfigError> {
    match path {
        Some(p) => Ok((Config::load(p)?, p.display().to_string())),
        None if Path::new(config::DEFAULT_PATH).exists() => Ok((
            Config::load(Path::new(config::DEFAULT_PATH))?,
            config::DEFAULT_PATH.to_string(),
        )),
        None => Ok((Config::default(), "built-in defaults".to_string())),
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let (config, source) = load_config(opts.config_path.as_deref())?;
    tracing::info!(config = %source, dry_run = opts.dry_run, "numapin starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(opts, config))
}

async fn serve(opts: RunOptions, config: Config) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    // Handlers first: the pid file tells `numapin rebalance` and operators
    // where to send SIGUSR1 and SIGHUP, whose default action would kill a
    // daemon that has no handlers yet.
    let (wake_tx, wake) = mpsc::unbounded_channel::<Wake>();
    spawn_signal_handlers(wake_tx.clone())?;
    let state_dir = config.apply.state_dir.clone();
    // A dry-run daemon changes nothing, so it neither takes the lock nor
    // rolls anything back; it may run beside a real one.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(Journal::lock(&state_dir)?)
    };
    let pid = pid_file::PidFile::write(&config.daemon.pid_file).map_err(|source| {
        DaemonError::PidFile {
            path: config.daemon.pid_file.clone(),
            source,
        }
    })?;
    let journal = Journal::open(&state_dir)?;
    let placements = Placements::open(&state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;

    let events_tx = wake_tx.clone();
    let sink: EventSink = Arc::new(move |e| {
        let _ = events_tx.send(Wake::Event(e));
    });
    libvirt::silence_default_error_printer();
    let lv = Libvirt::with_events(
        &config.libvirt.uri,
        Duration::from_secs(config.libvirt.call_timeout_secs),
        sink,
    );
    let host = LiveHost::new(lv.clone(), opts.root.clone());

    let metrics = Arc::new(Metrics::new());
    let server = start_metrics(&config, &metrics)?;
    let mover = if opts.dry_run {
        None
    } else {
        let pages = crate::converge::LivePages::new(lv.clone(), opts.root.clone());
        Some(
            crate::converge::Mover::start(Box::new(pages), config.apply.migrate_rate_mib_s)
                .map_err(|source| DaemonError::StateDir {
                    path: state_dir.clone(),
                    source,
                })?,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Arc::new(Mutex::new(Worker {
        metrics: metrics.clone(),
        changed_by_operator: Default::default(),
        on_dedicated_cpus: Default::default(),
        topology: None,
        // Two windows in a row: one burst of nested entries (a child VM
        // booted once) does not make a guest a hypervisor.
        sampler: Sampler::new(lv, opts.root.clone(), config.planner.default_vcpu_load)
            .with_nested(2, config.planner.nested_quiet_secs),
        config: Arc::new(config),
        dry_run: opts.dry_run,
        host,
        journal,
        placements,
        notifier: notifier.clone(),
        stop: stop.clone(),
        mover,
        locality_before: Default::default(),
        wanted_moves: Default::default(),
        started: std::time::Instant::now(),
    }));

    let mut daemon = Daemon {
        opts,
        worker,
        metrics,
        server,
        notifier,
        stop,
        wake,
        ready: false,
        stopping: false,
    };
    let result = daemon.main_loop().await;
    daemon.notifier.stopping();
    drop(pid);
    result
}

/// Another cycle is due right after this one.
#[derive(Debug, Default)]
struct FollowUp {
    cycle: bool,
    rebalance: bool,
}

struct Daemon {
    opts: RunOptions,
    worker: Arc<Mutex<Worker>>,
    metrics: Arc<Metrics>,
    server: Option<MetricsServer>,
    notifier: Notifier,
    stop: Arc<AtomicBool>,
    wake: mpsc::UnboundedReceiver<Wake>,
    ready: bool,
    stopping: bool,
}

fn lock(worker: &Mutex<Worker>) -> std::sync::MutexGuard<'_, Worker> {
    worker.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    fn config(&self) -> Arc<Config> {
        lock(&self.worker).config.clone()
    }

    async fn main_loop(&mut self) -> Result<(), DaemonError> {
        if !self.opts.dry_run && !self.recover().await {
            return Ok(()); // stopped while waiting for libvirt
        }
        let mut due: Option<Instant> = Some(Instant::now());
        let mut rebalance = false;
        let mut interval_at = Instant::now();
        loop {
            let watchdog = self.notifier.watchdog_interval();
            let next = due.unwrap_or(interval_at).min(interval_at);
            tokio::select! {
                _ = sleep_until(next) => {
                    let (report, follow_up) = self.run_cycle(CycleRequest { rebalance }, NEW_GUEST_WINDOW).await;
                    rebalance = follow_up.rebalance;
                    due = follow_up.cycle.then(|| {
                        Instant::now() + Duration::from_millis(self.config().daemon.event_delay_ms)
                    });
                    interval_at = Instant::now() + Duration::from_secs(self.config().daemon.interval_secs);
                    self.after_cycle(&report);
                    if self.stopping {
                        return Ok(());
                    }
                }
                Some(w) = self.wake.recv() => match w {
                    Wake::Event(Event::Domain { name, what, detail, .. }) => {
                        tracing::debug!(domain = %name, event = ?what, detail, "domain event");
                        if what.needs_cycle() {
                            let delay = Duration::from_millis(self.config().daemon.event_delay_ms);
                            let at = Instant::now() + delay;
                            due = Some(due.map_or(at, |d| d.min(at)));
                        }
                    }
                    Wake::Event(Event::JobEnded { name }) => {
                        tracing::debug!(domain = %name, "libvirt job ended");
                        let delay = Duration::from_millis(self.config().daemon.event_delay_ms);
                        let at = Instant::now() + delay;
                        due = Some(due.map_or(at, |d| d.min(at)));
                    }
                    Wake::Event(Event::ConnectionClosed) => {
                        tracing::warn!("libvirt connection closed; reconnecting on the next call");
                        due = Some(Instant::now() + Duration::from_secs(1));
                    }
                    Wake::Rebalance => {
                        tracing::info!("SIGUSR1: rebalancing now");
                        rebalance = true;
                        due = Some(Instant::now());
                    }
                    Wake::Reload => self.reload(),
                    Wake::Stop => {
                        tracing::info!("stopping");
                        return Ok(());
                    }
                },
                _ = sleep_until(Instant::now() + watchdog.unwrap_or(Duration::from_secs(3600))), if watchdog.is_some() => {
                    self.notifier.watchdog();
                }
            }
        }
    }

    /// Runs one cycle on a blocking thread. Signals that arrive meanwhile
    /// are handled: a stop lets the transaction in flight finish, a second
    /// one exits at once; reloads and rebalances wait for the cycle's end.
    async fn run_cycle(
        &mut self,
        req: CycleRequest,
        new_guest_window: Duration,
    ) -> (CycleReport, FollowUp) {
        let worker = self.worker.clone();
        let mut task =
            tokio::task::spawn_blocking(move || lock(&worker).cycle(req, new_guest_window));
        let mut deferred = Vec::new();
        let report = loop {
            tokio::select! {
                done = &mut task => break done.unwrap_or_else(|e| CycleReport {
                    error: Some(format!("cycle panicked: {e}")),
                    ..CycleReport::default()
                }),
                Some(w) = self.wake.recv() => match w {
                    Wake::Stop if self.stopping => {
                        tracing::warn!("second stop signal: exiting now; the next start rolls back the transaction in flight");
                        std::process::exit(1);
                    }
                    Wake::Stop => {
                        tracing::info!("stopping after the transaction in flight");
                        self.stopping = true;
                        self.stop.store(true, Ordering::SeqCst);
                    }
                    other => deferred.push(other),
                },
            }
        };
        // What arrived during the cycle: the cycle may or may not have
        // seen it, so a follow-up cycle settles it.
        let mut follow_up = FollowUp::default();
        for w in deferred {
            match w {
                Wake::Reload => self.reload(),
                Wake::Rebalance => {
                    follow_up.cycle = true;
                    follow_up.rebalance = true;
                }
                Wake::Event(Event::Domain { what, .. }) => follow_up.cycle |= what.needs_cycle(),
                Wake::Event(Event::ConnectionClosed | Event::JobEnded { .. }) => {
                    follow_up.cycle = true
                }
                Wake::Stop => {}
            }
        }
        (report, follow_up)
    }

    fn after_cycle(&mut self, report: &CycleReport) {
        let summary = report.summary(self.opts.dry_run);
        match &report.error {
            Some(e) => tracing::warn!(error = %e, "cycle: {summary}"),
            None => tracing::info!("cycle: {summary}"),
        }
        self.notifier.watchdog();
        if !self.ready {
            self.ready = true;
            self.notifier.ready(&summary);
        } else {
            self.notifier.status(&summary);
        }
    }

    /// Rolls back what a previous run left unfinished, waiting for libvirt
    /// as long as it takes. False when a stop came first.
    async fn recover(&mut self) -> bool {
        loop {
            let worker = self.worker.clone();
            let result = tokio::task::spawn_blocking(move || {
                let w = lock(&worker);
                recovery::recover(&w.host, &w.journal).inspect(|r| {
                    for done in r.iter().filter(|d| d.result.leaves_numapins_pins()) {
                        apply::remember(&w.host, &w.placements, &done.domain);
                    }
                })
            })
            .await;
            match result {
                Ok(Ok(recovered)) => {
                    for r in &recovered {
                        tracing::warn!(domain = %r.domain.name, result = ?r.result, "unfinished transaction of a previous run");
                    }
                    return true;
                }
                Ok(Err(RecoveryError::Journal(e))) => {
                    // A journal that cannot be read stands for domains that
                    // may be half-changed: keep trying, loudly.
                    tracing::error!(error = %crate::report::error_chain(&e), "cannot read the transaction journal");
                    self.notifier
                        .status(&format!("cannot read the journal: {e}"));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::report::error_chain(&e), "waiting for libvirt to roll back an unfinished transaction");
                    self.notifier
                        .status("waiting for libvirt to roll back an unfinished transaction");
                }
                Err(e) => tracing::error!(error = %e, "recovery panicked"),
            }
            self.notifier.watchdog();
            tokio::select! {
                _ = tokio::time::sleep(RECOVERY_RETRY) => {}
                Some(w) = self.wake.recv() => if matches!(w, Wake::Stop) { return false; },
            }
        }
    }

    /// SIGHUP: load, validate, swap. An invalid config is reported and the
    /// running one kept.
    fn reload(&mut self) {
        self.notifier.reloading();
        let mut w = lock(&self.worker);
        // Checked against the host as last read, so a reserved CPU that does
        // not exist is refused at reload, not at every later cycle.
        let result =
            load_config(self.opts.config_path.as_deref()).and_then(|(c, source)| {
                match w.topology.as_ref().map(|t| c.validate_for_host(t)) {
                    Some(Err((key, reason))) => Err(ConfigError::Invalid {
                        path: PathBuf::from(&source),
                        key,
                        reason,
                    }),
                    _ => Ok((c, source)),
                }
            });
        match result {
            Ok((new, source)) => {
                if new.apply.state_dir != w.config.apply.state_dir
                    || new.libvirt.uri != w.config.libvirt.uri
                    || new.daemon.pid_file != w.config.daemon.pid_file
                {
                    tracing::warn!(
                        "apply.state_dir, libvirt.uri and daemon.pid_file take effect at the next start only"
                    );
                }
                let mut new = new;
                new.apply.state_dir = w.config.apply.state_dir.clone();
                new.libvirt = w.config.libvirt.clone();
                new.daemon.pid_file = w.config.daemon.pid_file.clone();
                w.sampler
                    .set_default_vcpu_load(new.planner.default_vcpu_load);
                w.sampler
                    .set_nested_quiet_secs(new.planner.nested_quiet_secs);
                let listen_changed = new.metrics.listen != w.config.metrics.listen;
                w.config = Arc::new(new);
                let config = w.config.clone();
                drop(w);
                if listen_changed {
                    if let Some(old) = self.server.take() {
                        old.stop();
                    }
                    match start_metrics(&config, &self.metrics) {
                        Ok(server) => self.server = server,
                        Err(e) => {
                            tracing::error!(error = %crate::report::error_chain(&e), "metrics not served")
                        }
                    }
                }
                tracing::info!(config = %source, "config reloaded");
                self.metrics.set_config_reload(true);
                self.notifier.ready("config reloaded");
            }
            Err(e) => {
                let text = crate::report::error_chain(&e);
                tracing::error!(error = %text, "config reload failed; still running on the previous config");
                drop(w);
                self.metrics.set_config_reload(false);
                self.notifier.ready(&format!(
                    "config reload failed, running on the previous config: {text}"
                ));
            }
        }
    }
}

/// Serves metrics when `metrics.listen` is set.
fn start_metrics(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<MetricsServer>, DaemonError> {
    // Validated with the config, so the address parses.
    let Ok(Some(addr)) = config.metrics.listen_addr() else {
        return Ok(None);
    };
    let server =
        MetricsServer::start(addr, metrics.clone()).map_err(|source| DaemonError::Metrics {
            listen: config.metrics.listen.clone(),
            source,
        })?;
    tracing::info!(address = %server.local_addr(), "serving metrics");
    Ok(Some(server))
}

fn spawn_signal_handlers(tx: mpsc::UnboundedSender<Wake>) -> Result<(), DaemonError> {
    let kinds = [
        (SignalKind::user_defined1(), "usr1"),
        (SignalKind::hangup(), "hup"),
        (SignalKind::terminate(), "term"),
        (SignalKind::interrupt(), "int"),
    ];
    for (kind, name) in kinds {
        let mut stream = signal(kind).map_err(DaemonError::Runtime)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let wake = match name {
                    "usr1" => Wake::Rebalance,
                    "hup" => Wake::Reload,
                    _ => Wake::Stop,
                };
                if tx.send(wake).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
