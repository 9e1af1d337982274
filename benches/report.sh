#!/usr/bin/env bash
# Measures the planner on the benchmark hosts and fleets and rewrites the
# generated table in docs/PERFORMANCE.md. Figures depend on the machine and
# on what else runs on it: run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
nice -n "${NICE:-0}" cargo run --release --quiet --example bench_report -- --write docs/PERFORMANCE.md
