#!/usr/bin/env bash
# Runs the simulator for seed 1 and for seeds 1-20 (with its charts) and
# rewrites the generated sections of docs/SIMULATION.md with what they
# print. The prose around them ("Reading the results") quotes these
# figures and is revised by hand after a run.
#
#   bash benches/simulate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example simulate
sim=target/release/examples/simulate
one=$(mktemp) seeds=$(mktemp)
trap 'rm -f "$one" "$seeds"' EXIT
"$sim" >"$one"
"$sim" --seeds 1-20 --plot docs >"$seeds"
python3 - docs/SIMULATION.md "$one" "$seeds" <<'PY'
import re, sys
doc, one, seeds = sys.argv[1:]
text = open(doc).read()
for name, path in (("simulate one seed", one), ("simulate --seeds", seeds)):
    body = open(path).read().strip()
    pattern = re.compile(rf"(<!-- {re.escape(name)} begin[^>]*-->\n).*?(<!-- {re.escape(name)} end -->)", re.S)
    text, n = pattern.subn(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    if n != 1:
        sys.exit(f"{doc}: no generated section '{name}'")
open(doc, "w").write(text)
PY
echo "docs/SIMULATION.md: generated sections rewritten"
