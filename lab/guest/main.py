"""Entry point inside the lab guest (started by init.sh).

--mode run:     runs the scenarios named in --args (comma-separated, or
                `all`: every scenario in scenarios.ALL, in order; those in
                scenarios.EXTRA run by name only) and prints
                `LAB: RESULT name PASS|FAIL|SKIP secs detail`.
--mode compare: runs lab/guest/compare.py with --args as its options.
--mode soak:    runs the chaos soak (lab/guest/soak.py) with --args as its
                options (seed=N,duration=SECONDS).
"""

import argparse
import sys
import time
import traceback

import labkit
import scenarios


def run_scenarios(repo, names):
    if names == ["all"]:
        names = list(scenarios.ALL)
    failed = 0
    for name in names:
        fn = scenarios.ALL.get(name) or scenarios.EXTRA.get(name)
        t0 = time.monotonic()
        if fn is None:
            known = " ".join([*scenarios.ALL, *scenarios.EXTRA])
            print(f"LAB: RESULT {name} FAIL 0 unknown scenario (known: {known})", flush=True)
            failed += 1
            continue
        labkit.log(f"=== scenario {name}")
        try:
            detail = fn(repo) or "ok"
            verdict = "PASS"
        except scenarios.Skip as e:
            detail, verdict = str(e), "SKIP"
        except Exception as e:  # noqa: BLE001 - any failure is the scenario's
            traceback.print_exc()
            try:
                scenarios.report_failure()
            except Exception:  # noqa: BLE001 - the report must not hide the failure
                traceback.print_exc()
            detail, verdict = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        finally:
            scenarios.cleanup()
        detail = " ".join(str(detail).split())
        print(f"LAB: RESULT {name} {verdict} {time.monotonic() - t0:.0f}s {detail}", flush=True)
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--topology", required=True)
    ap.add_argument("--mode", default="run")
    ap.add_argument("--args", default="all")
    a = ap.parse_args()
    scenarios.TOPOLOGY = a.topology
    if a.mode == "soak":
        import soak

        return soak.main(a.repo, a.args.split(","))
    if a.mode == "compare":
        import compare

        return compare.main(a.repo, a.topology, a.args.split(","))
    return run_scenarios(a.repo, [n for n in a.args.split(",") if n])


if __name__ == "__main__":
    sys.exit(main())
