"""The soak's report: figures from numapin's log (rollbacks, recoveries:
what numapin did, counted, never used for an invariant), then plain text
for the console and the Markdown section lab/soak writes to
docs/RELIABILITY.md.
"""

import time

from soak_world import LOG

# numapin's log lines (src/apply, src/daemon) for what the report counts.
LOG_FIGURES = {
    "rollbacks": "step failed; rolling back",
    "rollbacks_pending": "rollback pending",
    "recoveries": "rolling back an unfinished transaction",
    "recovered": "unfinished transaction resolved",
    "cycles": "numapin::daemon: cycle:",
    "config_reloads": "config reloaded",
    "config_reloads_refused": "config reload failed",
    "libvirt_timeouts": "timed out",
}


def log_figures():
    counts = dict.fromkeys(LOG_FIGURES, 0)
    with open(LOG, errors="replace") as f:
        for line in f:
            for key, text in LOG_FIGURES.items():
                if text in line:
                    counts[key] += 1
    return counts


def add_log_figures(report):
    report["numapin_log"] = log_figures()
    return report


def text(r):
    lines = [f"SOAK: seed {r['seed']}, {r['duration_s']} s of faults, {r['total_s']} s in all, "
             f"{r['faults_total']} faults, {len(r['violations'])} violations"]
    lines += [f"SOAK: fault {k}: {v}" for k, v in r["faults"].items()]
    lines += [f"SOAK: {k}: {v}" for k, v in r["counts"].items()]
    lines += [f"SOAK: numapin log: {k}: {v}" for k, v in r["numapin_log"].items()]
    lines.append(f"SOAK: settled after a fault: {r['settle_s']}; all placed {r['final_settle_s']} s after "
                 f"the last fault; clean stop in {r['stop_s']} s; RSS KiB (early, late, max) {r['rss_kib']}; "
                 f"open files {r['fds']}")
    lines += [f"SOAK: VIOLATION {v['kind']} at {v['t']}: {v['detail']}" for v in r["violations"]]
    return "\n".join(lines)


def section(r):
    c, lg = r["counts"], r["numapin_log"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in r["faults"].items())
    viol = "\n".join(f"- `{v['kind']}`: {v['detail']}" for v in r["violations"]) or "none"
    when = time.strftime("%Y-%m-%d", time.gmtime())
    settle = r["settle_s"]
    return f"""## `lab/soak --seed {r['seed']} --duration {r['duration_s']}`

Run on {when}: {r['duration_s']} s of faults, {r['total_s']} s in all (the lab's boot not counted);
**{r['faults_total']} faults, {len(r['violations'])} invariant violations**. Replay with the same command.

| fault | injected |
| --- | ---: |
{rows}

| figure | value |
| --- | ---: |
| numapin restarts by the supervisor | {c.get('restarts', 0)} |
| clean stops (SIGTERM, exit 0) | {c.get('clean_stops', 0)} |
| faults landed mid-transaction / mid-memory-move | {c.get('mid_transaction', 0)} / {c.get('mid_memory_move', 0)} |
| transactions seen in the journal | {c.get('transactions_seen', 0)} |
| ended all as planned / all as before (read back from libvirt) | {c.get('transactions_ended_applied', 0)} / {c.get('transactions_ended_unchanged', 0)} |
| rollbacks (numapin's log: step failed) / left pending | {lg['rollbacks']} / {lg['rollbacks_pending']} |
| recoveries of a killed run's transaction (numapin's log) | {lg['recoveries']} |
| config reloads applied / refused | {lg['config_reloads']} / {lg['config_reloads_refused']} |
| job windows checked for memory moves / skipped (a move in flight at the job's start) | {c.get('job_windows_checked', 0)} / {c.get('job_windows_skipped_move_in_flight', 0)} |
| setvcpus refused by the guest (up / down) | {c.get('setvcpus_up_refused', 0)} / {c.get('setvcpus_down_refused', 0)} |
| faults drawn but not applicable then (no target) | {c.get('not_applicable', 0)} |
| time from a fault to the next settled state: longest / median ({settle['n']} settles) | {settle['max']} s / {settle['median']} s |
| every guest placed after the last fault | {r['final_settle_s']} s |
| final SIGTERM to exit | {r['stop_s']} s |
| numapin VmRSS KiB: early max, late max, max | {r['rss_kib']} |
| numapin open files: early max, late max, max | {r['fds']} |

Violations: {viol}
"""
