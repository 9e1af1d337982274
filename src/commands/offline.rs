//! Commands that need no running host: plan a snapshot, show a topology,
//! check a config.

use std::path::{Path, PathBuf};

use crate::cli::Format;
use crate::planner::{self, PlanInput};
use crate::report::{plan_table, topology_table};
use crate::snapshot;
use crate::topology::sysfs;

use super::{Failure, config_for_host, load_config, print_json, print_out};

pub fn plan(
    dir: &Path,
    config: Option<&Path>,
    format: Format,
    rebalance: bool,
) -> Result<(), Failure> {
    let (config, source) = load_config(config)?;
    let snap = snapshot::load(dir)?;
    config_for_host(&config, &source, &snap.topology)?;
    let plan = planner::plan(&PlanInput {
        topology: &snap.topology,
        domains: &snap.domains,
        observations: &snap.observations,
        config: &config,
        rebalance_all: rebalance,
        confirm: None,
    });
    match format {
        Format::Json => print_json(&plan),
        Format::Table => print_out(&plan_table::render(
            &plan,
            &snap.topology,
            &dir.display().to_string(),
        )),
    }
}

pub fn topology(dir: Option<&Path>, root: Option<PathBuf>, format: Format) -> Result<(), Failure> {
    let (topo, source) = match dir {
        Some(dir) => (
            snapshot::load_topology(dir)?,
            dir.join(snapshot::CAPABILITIES).display().to_string(),
        ),
        None => {
            let root = root.unwrap_or_else(|| PathBuf::from("/"));
            let topo = sysfs::read(&root).map_err(|e| Failure::new(e.exit(), e))?;
            (topo, format!("sysfs under {}", root.display()))
        }
    };
    match format {
        Format::Json => print_json(&topo),
        Format::Table => print_out(&topology_table::render(&topo, &source)),
    }
}

pub fn check_config(path: Option<&Path>) -> Result<(), Failure> {
    let (config, source) = load_config(path)?;
    print_out(&format!(
        "# effective configuration (from {source})\n{}",
        config.to_toml()
    ))
}
