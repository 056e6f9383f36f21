"""Render BENCHMARKS.md from benchmarks/out/results.json (run_all.py calls `write`).

    .venv/bin/python benchmarks/write_benchmarks_md.py   # re-render from the last results

Every figure and every verdict on the page comes from the results file: nothing here is typed
by hand except the explanations of *why* a figure is what it is, and each of those is printed
only when the figures it explains say so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "out" / "results.json"
BT = "batch-toggle"
BT_CONCURRENCY = 4  # batch-toggle's default --concurrency, which bench_peers keeps
PEER_NOTES = {
    "batch-toggle": "`batch-toggle run FILE --rate N/Ws` with the server's budget; its defaults "
                    "otherwise (concurrency 4), `--max-rps` scaled with the shrunk hour",
    "naive-python": "[naive_script.py](benchmarks/peers/naive_script.py): httpx, one PUT per "
                    "row in file order; tidies the common spellings (trim; yes/no, y/n, 1/0, "
                    "true/false; UUIDs lower-cased, braces dropped), sends the rest as it is; "
                    "no dedupe, no validation, a 429 is not retried",
    "xargs-curl": "[curl_xargs.sh](benchmarks/peers/curl_xargs.sh): `cut` the first four "
                  "columns, `xargs -P 8` one `curl` per line, cells as they are",
    "newman": "`newman run` [a one-request collection](benchmarks/peers/newman_collection.json) "
              "with `-d FILE`, cells as they are, JSON reporter",
}


# --- formatting helpers ---------------------------------------------------------------------


def n(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} MB"


def pct(part: int, whole: int) -> str:
    return f"{part:,} / {whole:,} ({100 * part / whole:.0f}%)" if whole else "–"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a JSON value as (dotted.path, value); long lists are left out."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            if k != "samples":  # the medians are shown; every sample is in the JSON
                out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        if len(value) > 8:
            return [(prefix, f"[{len(value)} items]")]
        out = []
        for i, v in enumerate(value):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, value)]


# --- the peer comparison --------------------------------------------------------------------


def wasted_cell(w: dict[str, int]) -> str:
    if not w["total"]:
        return "**0**"
    parts = [f"{w[k]:,} {label}" for k, label in (
        ("duplicate", "dup"), ("invalid", "invalid"), ("permanent_retry", "perm. retry"),
        ("rate_limited", "429"), ("other", "other")) if w[k]]
    return f"{w['total']:,} ({', '.join(parts)})"


def report_cell(r: dict[str, Any], rows: int) -> str:
    if not r["exists"]:
        return "none"
    if r["complete"]:
        return f"complete ({r['entries']:,} rows)"
    return f"incomplete ({r['entries']:,} entries for {rows:,} rows)"


def peer_table(s: dict[str, Any]) -> str:
    rows = []
    for peer, r in s["runs"].items():
        name = f"**{peer}**" if peer == BT else peer
        rows.append([name, n(r["requests"]), wasted_cell(r["wasted"]),
                     pct(r["rows_desired"], r["rows_scored"]),
                     n(r["rows_scored"] - r["rows_desired"]), _wall(r),
                     mb(r["tree_peak_rss_mb"]), report_cell(r["report"], s["rows"])])
    return table(["contestant", "requests sent", "wasted (why)", "rows in desired state",
                  "short by", "wall time", "peak RSS (tree)", "per-row report"], rows)


def _wall(r: dict[str, Any]) -> str:
    if "timed_out_after_s" in r:
        return f"**did not finish**: killed after {r['timed_out_after_s']:g} s"
    return secs(r["wall_s"])


def kill_table(s: dict[str, Any]) -> str:
    rows = []
    for peer, r in s["runs"].items():
        rr = r["rerun"]
        name = f"**{peer}**" if peer == BT else peer
        rows.append([name, n(r["requests"]), report_cell(r["report"], s["rows"]),
                     n(rr["requests"]), n(rr["wasted"]["duplicate"]),
                     wasted_cell(rr["wasted"]), pct(rr["rows_desired"], rr["rows_scored"]),
                     report_cell(rr["report"], s["rows"])])
    return table(["contestant", "requests before the kill", "report left by the killed run",
                  "re-run requests", "re-sent, already done", "re-run wasted (why)",
                  "rows in desired state after the re-run", "report after the re-run"], rows)


def where_peers_win(scenarios: dict[str, Any]) -> list[str]:
    """Where a peer beat batch-toggle on some measure, with why (figures included)."""
    notes = []
    for name, s in scenarios.items():
        bt = s["runs"].get(BT)
        if bt is None or s["kill"]:
            continue
        peers = {p: r for p, r in s["runs"].items() if p != BT}
        faster = {p: r for p, r in peers.items() if r["wall_s"] < bt["wall_s"]}
        if faster:
            notes.append(_faster_note(name, s, faster, bt))
        if s["limit"] >= 10**6:
            lighter = {p: r for p, r in peers.items()
                       if r["tree_peak_rss_mb"] < bt["tree_peak_rss_mb"]}
            if lighter:
                notes.append(
                    f"*{name}*, memory: " + _list(lighter, "tree_peak_rss_mb", mb)
                    + f" at peak against batch-toggle's {mb(bt['tree_peak_rss_mb'])}: "
                    "batch-toggle loads pyarrow and numpy (it is built for million-row files), "
                    "SQLite and its planner; a script that streams rows holds almost nothing.")
        better = {p: r for p, r in peers.items() if r["rows_desired"] > bt["rows_desired"]}
        if better:
            notes.append(f"*{name}*: " + _list(better, "rows_desired", n) + " rows in their "
                         f"desired state, more than batch-toggle's {bt['rows_desired']:,}.")
    logs = sorted({p for s in scenarios.values() for p, r in s["runs"].items()
                   if p != BT and not s["kill"] and r["report"]["complete"]})
    if logs:
        notes.append(", ".join(logs) + " also leave a complete per-row record on a full run "
                     "(each row's HTTP status). It does not say which rows were duplicates, "
                     "superseded or invalid, nor which rows to send again.")
    return notes


def _list(runs: dict[str, Any], key: str, fmt: Any) -> str:
    return ", ".join(f"{p} {fmt(r[key])}" for p, r in runs.items())


def _faster_note(name: str, s: dict[str, Any], faster: dict[str, Any],
                 bt: dict[str, Any]) -> str:
    head = (f"*{name}*, wall time: {_list(faster, 'wall_s', secs)} against batch-toggle's "
            f"{secs(bt['wall_s'])}")
    if s["limit"] >= 10**6:
        return (head + ". With no budget to respect only speed is left, and batch-toggle "
                "spends time a bare loop does not: starting up (pyarrow, numpy), reading the "
                "file into Arrow and planning, committing every outcome to SQLite "
                "(synchronous=FULL) before counting it, writing the report and its summary.")
    limited = sum(r["wasted"]["rate_limited"] for r in faster.values())
    return (head + ". batch-toggle waits for the budget window to free instead of sending into "
            f"a full one; the faster ones did not wait, and between them got {limited:,} "
            "429s and left rows undone (the table's *short by*).")


def peers_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    scen = res["scenarios"]
    out = ["## batch-toggle against what users would pick instead", ""]
    out += _peers_intro(res)
    headline = _headline(scen)
    if headline:
        out += [headline, ""]
    for name, s in scen.items():
        out += [f"### {name}: {s['title']}", ""]
        out += [f"{s['rows']:,}-row {s['input']} file; sandbox budget {s['limit']:,} requests "
                f"per {s['window']:g} s (batch-toggle told `--rate {s['limit']}/"
                f"{s['window']:g}s`).", ""]
        out += [kill_table(s) if s["kill"] else peer_table(s), ""]
        out += _scenario_notes(name, s)
    notes = where_peers_win(scen)
    if notes:
        out += ["### Where a peer wins", ""] + [f"- {line}" for line in notes] + [""]
    out += ["### Commands", "",
            "The runs of the first scenario ($WORK is the run's scratch directory, PORT its "
            "sandbox's; `LOGIS_API_KEY` holds a sandbox key). The other scenarios change the "
            "input file and batch-toggle's `--rate` only.", ""]
    first = next(iter(scen.values()))
    out += [f"- {peer}: `{r['command']}`" for peer, r in first["runs"].items()]
    kill = next((s for s in scen.values() if s["kill"]), None)
    if kill and BT in kill["runs"]:
        out += [f"- batch-toggle's re-run after the kill: "
                f"`{kill['runs'][BT]['rerun']['command']}`; the other contestants repeat "
                "their first command."]
    out += ["", "Sandbox: `python -m batch_toggle sandbox --port 0 --seed "
            "benchmarks/data/peers/<rows>-rows/seed.csv --hourly-limit N --window W "
            "--api-key KEY`, one per run."]
    if res.get("out_of_time"):
        out += ["", "Not run, out of time: " + ", ".join(res["out_of_time"]) + "."]
    if res.get("skipped"):
        out += ["", "Skipped: " + "; ".join(f"{p} ({why})" for p, why in res["skipped"].items())]
    return out + [""]


def _peers_intro(res: dict[str, Any]) -> list[str]:
    data = ", ".join(f"{rows}-row files: {d['seed_jobs']:,} seed jobs, "
                     f"{d['messy_rows_scored']:,} messy rows with a clear intent "
                     f"({d['messy_units_scored']:,} units)" for rows, d in res["data"].items())
    lines = [
        "Every run: a fresh `python -m batch_toggle sandbox` process on a loopback port (same "
        "seed for every contestant), one contestant, then the sandbox's own request log "
        "(`/_sandbox/requests`) and final state (`/_sandbox/state`) are scored. Inputs "
        f"([make_data.py](benchmarks/peers/make_data.py); {data}):",
        "",
        "- **messy**: the shipped sample's recipe (`sample_data/make_samples.py`) run once per "
        "block of 300 rows: real-world spellings of UUIDs, states and targets, 4% duplicates, "
        "conflicting states, a unit named with two review keys, an unknown job, a wrong review "
        "key, 3% invalid rows, a quoted newline, CRLF;",
        "- **clean**: as many rows, same columns, one row per distinct unit, canonical values.",
        "",
        "The seed starts every unit in the opposite state of the file's intent, so a unit found "
        "in its desired state was put there by the contestant. Rows *with a clear intent* are "
        "the valid rows except the unit with two review keys (a human must choose); a "
        "conflicting pair's intent is its last row (file order).",
        "",
        "**Wasted** requests, from the server's log: *dup* a unit already answered earlier in "
        "the run (or, after a kill, in the killed run); *invalid* a 400, or a 404 for a job "
        "that exists (its id was sent misspelled); *perm. retry* the same unit again after a "
        "401/404; *429* every rate-limited request. The first request for an unknown job or "
        "with a wrong review key is not waste: only the server can tell. Budgets scale the "
        f"real 2,500/hour: the hour becomes {3600 / res['time_scale']:g} s "
        f"({res['time_scale']:g}x), and batch-toggle's `--max-rps` scales with it. Every "
        "request the sandbox receives counts against its window, 429s included, as Logis "
        "counts them. Wall time is from process start to exit; peak RSS sums the contestant's "
        "whole process tree (sampled every 50 ms).",
        "",
        *_pace_note(res),
        "Contestants:",
        "",
    ]
    lines += [f"- **{p}**: {PEER_NOTES[p]}" for p in PEER_NOTES]
    return lines + [""]


def _pace_note(res: dict[str, Any]) -> list[str]:
    """Why the shrunk hour is fair: its rate stays below every contestant's own speed."""
    hour = next((s for name, s in res["scenarios"].items() if name.startswith("hour")), None)
    raw = next((s for name, s in res["scenarios"].items() if name.startswith("raw")), None)
    if hour is None:
        return []
    rate = hour["limit"] / hour["window"]
    text = (f"The shrunk hour's average rate ({hour['limit']:,} per {hour['window']:g} s, "
            f"{rate:.0f} requests/s) stays below each contestant's own speed, as the real "
            "2,500/h (0.7 requests/s) does, so a tool that does not pace itself meets the limit "
            "here as it would there")
    if raw is not None:
        speeds = ", ".join(f"{p} {raw['rows'] / r['wall_s']:.0f}/s"
                           for p, r in raw["runs"].items() if r["wall_s"])
        text += f" (rows per second with no budget, start-up included: {speeds})"
    return [text + ".", ""]


def _headline(scen: dict[str, Any]) -> str | None:
    s = scen.get("hour-messy")
    if s is None or BT not in s["runs"]:
        return None
    bt = s["runs"][BT]
    ok = bt["wasted"]["total"] == 0 and bt["rows_desired"] == bt["rows_scored"]
    verdict = "**met**" if ok else "**NOT met**"
    peers = "; ".join(
        f"{p} {r['wasted']['total']:,} wasted and {r['rows_scored'] - r['rows_desired']:,} rows "
        "short" for p, r in s["runs"].items() if p != BT)
    return (f"**On the messy file ({s['rows']:,} rows, the budget shrunk):** batch-toggle sent "
            f"{bt['requests']:,} requests, {bt['wasted']['total']:,} wasted, and left "
            f"{bt['rows_desired']:,} of {bt['rows_scored']:,} rows with a clear intent in their "
            f"desired state (acceptance: zero waste, every such row: {verdict}). "
            f"The others: {peers}.")


def _scenario_notes(name: str, s: dict[str, Any]) -> list[str]:
    runs = s["runs"]
    notes = []
    bt = runs.get(BT)
    if bt and s["kill"]:
        rr = bt["rerun"]
        resent = rr["wasted"]["duplicate"]
        bound = ("within the engine's bound: a worker takes its next unit only once its last "
                 "outcome is committed, so at most --concurrency (4) are re-sent"
                 if resent <= BT_CONCURRENCY else
                 f"**more than --concurrency ({BT_CONCURRENCY})**, the bound the engine means "
                 "to keep")
        notes.append(
            f"batch-toggle's re-run is `--resume` on the same state store: it sent "
            f"{rr['requests']:,} requests, {resent:,} of them for units the killed run had "
            f"already settled but not yet committed when the kill came ({bound}; nothing "
            "reported as done is lost, and a re-sent PUT is harmless). The other contestants "
            "have no memory of the killed run, so their re-run is the whole file again.")
    if bt and not s["kill"] and bt["statuses"].get("429"):
        notes.append(f"batch-toggle got {bt['statuses']['429']:,} 429s here.")
    curl = runs.get("xargs-curl")
    if curl and not curl["report"]["complete"] and s["input"] == "messy":
        notes.append("xargs-curl's log is not per row: `cut` splits a quoted newline into two "
                     "lines, each sent as a request, and the lines come back in completion "
                     "order.")
    return [f"- {line}" for line in notes] + ([""] if notes else [])


# --- the other benchmarks --------------------------------------------------------------------


def validate_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    out = [f"## validate: {res['rows']:,} rows, the whole process", "",
           "`batch-toggle validate FILE --report R.csv` (load, normalise, dedupe, plan, write "
           "the report and its summary) against the job's I/O floor (read the file with "
           "pyarrow, append 17 copied columns, write CSV), each a fresh process, best of "
           f"{res['repeat']} ([bench_validate.py](benchmarks/bench_validate.py)).", ""]
    rows = []
    for fmt in ("csv", "parquet"):
        r = res.get(fmt)
        if not r:
            continue
        rows.append([fmt, f"{r['input_mb']:.0f} MB", secs(r["baseline"]["wall_s"]),
                     mb(r["baseline"]["peak_rss_mb"]), secs(r["validate"]["wall_s"]),
                     mb(r["validate"]["peak_rss_mb"]), f"{r['ratio']:.1f}x",
                     "yes" if r["meets_target"] else "**no**"])
    t = res.get("targets", {})
    out += [table(["input", "size", "I/O floor", "floor RSS", "validate", "validate RSS",
                   "ratio", f"target (<= {t.get('max_ratio', '?')}x, <= "
                   f"{t.get('max_rss_mb', 0) / 1024:.1f} GB)"], rows), ""]
    return out


def sandbox_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    out = ["## Sandbox: requests per second", "",
           "What the sandbox serves on this machine with no faults "
           "([bench_sandbox.py](benchmarks/bench_sandbox.py)): its own process with a bare "
           "HTTP/1.1 client (the server's ceiling), with httpx (the client batch-toggle uses), "
           "and in-process through httpx.ASGITransport (`run --sandbox`). "
           f"{res.get('seconds_per_point', '?')} s per point.", ""]
    rows = []
    for c in res.get("server_rps", {}):
        rows.append([c, n(res["server_rps"].get(c)), n(res.get("httpx_rps", {}).get(c)),
                     n(res.get("inprocess_rps", {}).get(c))])
    out += [table(["concurrency", "socket, bare client (req/s)", "socket, httpx (req/s)",
                   "in-process (req/s)"], rows), ""]
    return out


SENDER_VARIANTS = {
    "bare": "a bare httpx.AsyncClient loop",
    "runner": "the Runner, no state store",
    "runner_store": "the Runner with the SQLite state store",
}


def sender_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    c = res["ceiling"]
    out = ["## Sender: its ceiling, and how close it drains a budget", "",
           "The sandbox in its own process, no latency, no faults "
           "([bench_sender.py](benchmarks/bench_sender.py)). Ceiling: requests per second at "
           f"concurrency {c['concurrency']} with no budget in the way, "
           f"{c['requests_per_sample']:,} requests per sample, median of the interleaved "
           "samples.", ""]
    medians = c.get("median_rps") or {"bare": c["bare_httpx_rps"], "runner": c["runner_rps"],
                                      "runner_store": c["runner_store_rps"]}
    ratios = c.get("ratio_to_bare") or {"bare": 1.0, "runner": c.get("ratio_runner"),
                                        "runner_store": c.get("ratio_runner_store")}
    cpu = c.get("client_cpu_us_per_request") or {}
    about = {**SENDER_VARIANTS, **(c.get("variants") or {})}
    rows = [[f"`{k}`: {about.get(k, '')}".rstrip(": "), n(v),
             n(ratios.get(k, 1.0 if k == "bare" else None)),
             f"{cpu[k]:,.0f} µs" if k in cpu else "–"] for k, v in medians.items()]
    out += [table(["client", "requests/s", "share of bare httpx", "client CPU per request"],
                  rows), "", f"Target: the Runner at >= {c['target_ratio']}x bare httpx.", ""]
    drains = res.get("drain_all") or res.get("drain") or []
    if isinstance(drains, dict):
        drains = [drains]
    if drains:
        b = drains[0]["server_budget"]
        out += [f"Drain: `batch-toggle run` sends {drains[0]['requests']:,} requests to a sandbox "
                f"allowing {b['hourly_limit']} per {b['window_s']:g} s, with the same `--rate`; "
                "the span is measured on the server's clock.", "",
                table(["--rate", "--max-rps", "theoretical minimum",
                       "engine floor (with its safety margin)", "measured span", "ratio", "429s",
                       "most in any window"], [[
                           f"`{d['rate']}`", f"{d['max_rps']:g}", secs(d["theoretical_min_s"]),
                           secs(d["engine_floor_s"]), secs(d["server_span_s"]),
                           f"{d['ratio']:.2f}x", n(d["responses_429"]),
                           n(d["max_in_any_window"])] for d in drains]),
                "", f"Target: <= {drains[0]['target_ratio']}x the theoretical minimum, zero "
                "429s.", ""]
    met = res.get("targets_met")
    if isinstance(met, dict):
        out += ["Targets met: " + ", ".join(f"{k} {'yes' if v else '**no**'}"
                                            for k, v in met.items()) + ".", ""]
    return out + _load_line(res)


def store_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    out = ["## State store: what durability costs the sender", "",
           "The Runner with outcomes in memory only (*none*) against a real SQLite store "
           "(WAL, synchronous=FULL, send log and ledger) "
           "([bench_store.py](benchmarks/bench_store.py)); medians of interleaved pairs.", ""]
    rows = []
    sweep = [(f"sweep:{c}", w) for c, w in (res.get("sweep") or {}).items()]
    others = [(k, res.get(k)) for k in ("paced", "remote")]
    labels = {"paced": "paced", "remote": "a 20 ms server, paced"}
    for key, w in sweep + others:
        if not w:
            continue
        label = labels.get(key, "no pacing")
        pace = "unlimited" if w.get("max_rps") in (None, "unlimited") else f"{w['max_rps']:g}"
        share = w.get("share_of_ceiling_paired_median", w["share_of_ceiling"])
        rows.append([f"{label}, --max-rps {pace}, {w.get('concurrency', 4)} workers",
                     f"{w['units']:,}", n(w["rps_none"]), n(w["rps_store"]),
                     f"{100 * share:.0f}%", f"{w.get('rows_per_commit', 0):.1f}",
                     f"{w['cpu_overhead_us_per_row']:.0f} µs", f"{100 * w['cpu_share']:.0f}%"])
    out += [table(["workload", "units", "req/s, none", "req/s, store",
                   "wall-time share (paired median)", "rows a commit", "CPU per row added",
                   "CPU share"], rows), ""]
    parts = res.get("decomposition_c4")
    if parts:
        out += ["Taken apart at 4 workers (wall-time share of their rate without the store): "
                f"commits that write nothing {100 * parts['structure']:.0f}% (the committer's "
                "machinery and the workers' wait for their round), one fsync a round "
                f"{100 * parts['fsync']:.0f}%, the real store {100 * parts['store']:.0f}%. "
                "Each worker waits for its outcome's commit before its next request (the bound "
                "on what a kill -9 makes a resume send again), so on loopback, where the "
                "sandbox answers in under 3 ms, the round's fsync and SQL are waited out by "
                "every worker; with more workers a round carries more rows, and against a "
                "server as slow as a real API the wait hides behind the requests in flight. "
                "Rounds are committed on the event loop: on a thread, the two fought over the "
                "GIL (16 workers: 14% with a thread, 4-9% inline).", ""]
    m = res.get("micro")
    if m:
        out += [f"The store alone, no network: {m['send_log_us_per_row']:.0f} µs per row for the "
                f"two send-log writes, {m['outcome_commit_us_per_row']:.0f} µs per row for the "
                f"outcome commit (batches of {m.get('batch_rows', '?')}).", ""]
    top = res.get("at_ceiling")
    if "target_share" in res and top:
        met = "met" if res.get("target_met") else "**not met**"
        out += [f"Target: the store costs < {100 * res['target_share']:.0f}% of the sender's "
                f"ceiling: {met}. The sender's ceiling, the best median rate of the sweep: "
                f"{n(top['rps_none'])} req/s without the store ({top['concurrency_none']} "
                f"workers), {n(top['rps_store'])} with it ({top['concurrency_store']} workers): "
                f"the store costs {100 * top['share']:.0f}%. At the default 4 workers, which "
                "are not the sender's ceiling, it costs "
                f"{100 * res['share_at_default_concurrency']:.0f}% (see above why).", ""]
    return out + _load_line(res)


def _load_line(res: dict[str, Any]) -> list[str]:
    load = res.get("load_average")
    if isinstance(load, dict):
        load = load.get("before")
    return [f"Load average when it ran: {load:.2f}.", ""] if isinstance(load, float) else []


def estimates_section(entry: dict[str, Any]) -> list[str]:
    """Plan estimate vs measured: each scenario's promise, what came true, and what the
    formula the cost model replaced would have promised."""
    res = entry["result"]
    tol = res["tolerance"]
    met = "**met**" if res["all_within"] else "**NOT met**"
    out = ["## Plan estimate vs measured", "",
           "The real CLI against the sandbox in its own process, the hour shrunk to seconds "
           "(`--rate N/Ss` and the sandbox's window alike). *Estimated*: the plan's (for a "
           "resumed slice, the resume's) `estimated_duration_s`, with the range it gave while "
           "no reply latency was known; *measured*: from that announcement to the server's "
           "reply to the last PUT. *Old formula*: max((requests - N) x PERIOD / N, requests / "
           f"--max-rps), which the cost model replaced. Target: within {100 * tol['share']:.0f}% "
           f"or {tol['seconds']:g} s: {met}.", ""]
    rows = []
    for r in res["scenarios"]:
        low, high = r.get("range_s") or (None, None)
        given = (f" ({secs(low)} to {secs(high)})" if r.get("latency_source") == "assumed"
                 and low is not None else f" (latency: {r.get('latency_source')})")
        rows.append([f"{r['scenario']}: {r['what']}", n(r["requests"]), f"`{r['rate']}`",
                     secs(r["estimated_s"]) + given, secs(r["measured_s"]),
                     f"{100 * r['error_share']:+.1f}%" if r["error_share"] is not None else "–",
                     f"{secs(r['old_formula_s'])} ({100 * r['old_error_share']:+.0f}%)"
                     if r["old_error_share"] is not None else secs(r["old_formula_s"])])
    out += [table(["scenario", "requests", "rate", "estimated", "measured", "error",
                   "old formula (error)"], rows), ""]
    return out + _load_line(res)


def startup_section(entry: dict[str, Any]) -> list[str]:
    res = entry["result"]
    rows = [[f"`{name}`", f"{c['median_s'] * 1000:.0f} ms", f"{c['ratio_to_bare_python']:.1f}x",
             mb(c["peak_mb"]), ", ".join(c["loaded_heavy"]) or "none"]
            for name, c in res["cases"].items()]
    return ["## Start-up: what a command costs before it does anything", "",
            f"Each case is a fresh interpreter, {res['repeat']} times, interleaved with the bare "
            "interpreter (`python -c pass`); the median, its ratio to the bare start, the peak "
            "memory, and the heavy libraries the case ended with. Target: `--help` under "
            f"{res['target_seconds']:g} s, loading neither pyarrow nor httpx "
            f"({'met' if res['met'] else 'missed'}).", "",
            table(["case", "median", "vs bare python", "peak memory", "heavy libraries loaded"],
                  rows), ""]


def pg_store_section(entry: dict[str, Any]) -> list[str]:
    """bench_pg_store: a request's slot reservation, release and outcome commit."""
    res = entry["result"]
    if res.get("skipped"):
        return ["## PostgreSQL store: cost per request", "", f"Skipped: {res['skipped']}.", ""]
    rows = [[name, f"{res[key]['median_ms']:.2f} ms", f"{res[key]['p99_ms']:.2f} ms",
             f"{res[key]['max_ms']:.2f} ms"]
            for key, name in (("reserve", "slot reserved (shared budget)"),
                              ("release", "slot released at the reply"),
                              ("commit", "outcome + ledger committed"),
                              ("total", "**per request**"))]
    met = "met" if res["target_met"] else "**missed**"
    return [
        "## PostgreSQL store: cost per request", "",
        f"What one request costs a run on a shared PostgreSQL store "
        f"([bench_pg_store.py](benchmarks/bench_pg_store.py)): {n(res['requests'])} requests "
        f"one after another, one process, a throwaway PostgreSQL {res['postgresql']} on "
        f"127.0.0.1 with fsync {res['fsync']} (data on disk, not tmpfs).", "",
        table(["step", "median", "p99", "max"], rows), "",
        f"Target: under 5 ms at the median and 20 ms at p99 ({met}). Against the 1.44 s the "
        f"2,500/h budget spaces requests by, that is {res['median_share_of_spacing']:.2%} of "
        f"the spacing at the median and {res['p99_share_of_spacing']:.2%} at p99.", ""]


def generic_section(title: str, entry: dict[str, Any]) -> list[str]:
    """A benchmark this page has no special layout for: its figures as a key/value table."""
    leaves = [(k, v) for k, v in flatten(entry["result"]) if k not in ("benchmark",)]
    return [f"## {title}", "", table(["figure", "value"], ([f"`{k}`", n(v)] for k, v in leaves)),
            ""]


TITLES = {"validate": "validate", "sender": "Sender ceiling", "store": "State store overhead",
          "pg_store": "PostgreSQL store: cost per request",
          "sandbox": "Sandbox requests/s", "sandbox_memory": "Sandbox request log memory",
          "peers": "Peer comparison", "estimates": "Plan estimate vs measured",
          "startup": "Start-up"}
RENDER = {"peers": peers_section, "validate": validate_section, "sandbox": sandbox_section,
          "sender": sender_section, "store": store_section, "estimates": estimates_section,
          "startup": startup_section, "pg_store": pg_store_section}


def render(record: dict[str, Any]) -> str:
    m, v = record["machine"], record["versions"]
    out = [
        "# Benchmarks", "",
        f"Generated by `{record['command']}` ([benchmarks/run_all.py](benchmarks/run_all.py)) "
        f"on {record['generated_at']}; the whole run took {record['total_s'] / 60:.1f} min. "
        "Do not edit by hand: every figure comes from benchmarks/out/results.json.", "",
        "## Machine and versions", "",
        table(["", ""], [
            ["CPU", f"{m['cpu']} ({m['nproc']} cores)"], ["memory", f"{m['memory_gb']} GB"],
            ["OS", f"{m['os']}, kernel {m['kernel']}"],
            ["load average at start", m["load_average_at_start"]],
            *[[k, f"`{val}`" if val else "not installed"] for k, val in v.items()],
        ]), "",
        "Benchmarks run one after the other; other work on the machine, if any, shows in the "
        "load average above.", "",
        "## Contents and commands", "",
        table(["benchmark", "command", "status", "time"], [
            [TITLES.get(name, name), f"`{b['command']}`" if b.get("command") else "–",
             _status(b), secs(b.get("seconds"))]
            for name, b in record["benchmarks"].items()]), "",
    ]
    order = ("peers", "validate", "sender", "store", "pg_store", "sandbox", "estimates",
             "startup")
    for name in order:
        entry = record["benchmarks"].get(name)
        if not entry or entry.get("status") not in ("ok", "partial") or not entry.get("result"):
            continue
        if entry["status"] == "partial":
            out += [f"> **{TITLES[name]}: incomplete.** It was stopped after "
                    f"{entry.get('limit_s', 0):g} s; what follows is what it had finished.", ""]
        try:
            out += RENDER.get(name, lambda e, t=TITLES[name]: generic_section(t, e))(entry)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            # A result whose shape changed: show its figures rather than nothing.
            print(f"write_benchmarks_md: {name}: layout failed ({exc!r}); "
                  "showing its raw figures", file=sys.stderr)
            out += generic_section(TITLES[name], entry)
    return "\n".join(out).rstrip() + "\n"


def _status(b: dict[str, Any]) -> str:
    status = b.get("status", "?")
    if status == "ok":
        code = b.get("exit_code")
        return "ok" if code in (0, None) else f"ok (exit {code}: a target missed, see below)"
    if status == "missing":
        return "not written yet (skipped)"
    if status == "partial":
        return "**stopped (time limit)**: partial results"
    return f"**{status}**"


def write(record: dict[str, Any], path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(record), encoding="utf-8")
    tmp.replace(path)
    return path


def main() -> None:
    record = json.loads(RESULTS.read_text(encoding="utf-8"))
    print(write(record, REPO / "BENCHMARKS.md"))


if __name__ == "__main__":
    main()
