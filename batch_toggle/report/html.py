"""The HTML report: one self-contained page beside every report, for the people who read it.

Compliance officers file it (often printed to PDF); operators glance at it after a long run. So:

* self-contained: inline CSS and inline SVG charts, no script, no font, no image, no link that
  loads anything; a Content-Security-Policy forbids any of them even if a browser were tricked;
* every piece of text that came from an input file (column names, cells, error messages that
  quote a value) is HTML-escaped: a cell reading `<script>` is shown, never run;
* review keys are shown masked (the report already masks them; the page masks again, so a
  column it did not know about can never leak a full key);
* the table of rows that need attention is capped (a million bad rows would make a page no
  browser opens); the note under it says how many more there are and where they are;
* it reads on paper: light colours only, bars keep their colour, table headers repeat on every
  page and rows never split across pages.

The page is rendered from the summary dict (the evidence filed beside the report) and the report
table, so it shows exactly what the files say.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from batch_toggle.clock import parse_utc
from batch_toggle.config import format_duration
from batch_toggle.report.table import attention_mask
from batch_toggle.report.writers import html_path, write_text
from batch_toggle.send.cost import ASSUMED, LATENCY_HIGH, LATENCY_LOW, latency_text
from batch_toggle.vocab import (
    ERROR_CODES,
    NOT_ATTEMPTED,
    OK_STATUSES,
    OUTCOME_COLUMNS,
    PROBLEM_STATUSES,
    REVIEW_KEY_MASK_PREFIX,
    STATUSES,
    verdict_class,
)

ATTENTION_LIMIT: Final = 1000  # rows shown in the attention table; the rest are counted

# One line per status, for a reader who has not read the docs (docs/report.md says more).
STATUS_MEANING: Final = {
    "updated": "sent; Logis confirmed the desired state",
    "dry_run": "would be sent (validate / --dry-run: nothing was sent)",
    "unchanged": "an earlier run confirmed this state; no request needed",
    "duplicate": "same job, target, state and key as an earlier row; shares its outcome",
    "superseded": "another row for the same job and target won the conflict (--on-conflict)",
    "conflict": "rows disagree (review key, or state with --on-conflict reject) or a "
                "resubscribe was blocked; nothing sent",
    "invalid": "a value is missing or malformed; nothing sent",
    "failed": "Logis refused the request or it failed after every retry",
    "mismatch": "Logis answered, but not with the desired state",
    "not_attempted": "the run stopped before this row (see error_code); resumable",
    "in_sync": "audit: Logis already has the desired state",
    "would_change": "audit: a run would change this row",
}

# The columns of the attention table: (heading, report column or a computed key).
_ATTENTION_COLUMNS: Final = (
    ("row", "_ref"), ("job_id", "job_id"), ("target", "update_target"),
    ("desired", "do_notify_sms"), ("review key", "_key"), ("status", "status"),
    ("error_code", "error_code"), ("error_message", "error_message"),
)

_CSS: Final = """
:root { --ok: #2e7d32; --bad: #c62828; --warn: #e65100; --other: #546e7a; --req: #1565c0;
        --wait: #ffcc80; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: #1f2328; background: #fff; margin: 0 auto; max-width: 1200px;
       padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line);
     break-after: avoid; page-break-after: avoid; }
.sub { color: var(--muted); margin: 0 0 16px; }
.verdict { border: 2px solid var(--other); border-left-width: 8px; border-radius: 6px;
           padding: 10px 14px; margin: 12px 0; background: #f6f8fa; }
.verdict.ok { border-color: var(--ok); background: #eef7ee; }
.verdict.attention { border-color: var(--bad); background: #fdf0f0; }
.verdict.stopped { border-color: var(--warn); background: #fff4e5; }
.verdict strong { font-size: 16px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
table.kv th { width: 220px; font-weight: 600; background: #f6f8fa; }
table.options th { width: auto; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 12px; word-break: break-all; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
svg text { font: 12px system-ui, sans-serif; fill: #1f2328; }
svg .axis { stroke: #8c959f; stroke-width: 1; }
.note { color: var(--muted); }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
          vertical-align: baseline; }
table.attention td { font-size: 12px; }
table.attention td.nowrap { white-space: nowrap; word-break: normal; }
.scroll { overflow-x: auto; }
.status-ok { color: var(--ok); }
.status-bad { color: var(--bad); font-weight: 600; }
.status-warn { color: var(--warn); font-weight: 600; }
dl.meanings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dl.meanings dt { font-family: ui-monospace, monospace; }
dl.meanings dd { margin: 0; }
footer { margin-top: 28px; color: var(--muted); font-size: 12px; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@page { size: A4; margin: 12mm; }
@media print {
  body { padding: 0; max-width: none; font-size: 11px; }
  .grid { display: block; }
  figure { margin-bottom: 12px; }
  a { color: inherit; text-decoration: none; }
  table.attention td, table.attention th { font-size: 9px; padding: 2px 4px; }
}
"""

# No script, no remote anything: only inline styles and inline SVG may render.
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"




def write_html_report(summary: Mapping[str, Any], report: pa.Table, path: Path, *,
                      limit: int = ATTENTION_LIMIT, durable: bool = True) -> None:
    """Render the page and write it atomically, mode 0600 (like every other report file);
    `durable` as for report.write_text."""
    write_text(render_html(summary, report, limit=limit), Path(path), durable=durable)


def render_html(summary: Mapping[str, Any], report: pa.Table, *,
                limit: int = ATTENTION_LIMIT) -> str:
    """The whole page as one string: header and verdict, evidence, charts, timeline, attention."""
    parts = [
        _head(summary),
        _header(summary),
        _outcome_charts(summary),
        _sending(summary),
        _attention(summary, report, limit),
        _evidence(summary),
        _meanings(summary),
        _footer(summary),
        "</body>\n</html>\n",
    ]
    return "".join(parts)


# --- helpers ---------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute; None is an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _e(value)


def _status_class(status: str) -> str:
    if status in PROBLEM_STATUSES:
        return "bad"
    if status == NOT_ATTEMPTED:
        return "warn"
    return "ok" if status in OK_STATUSES else "other"


def _colour(kind: str) -> str:
    return {"ok": "var(--ok)", "bad": "var(--bad)", "warn": "var(--warn)"}.get(
        kind, "var(--other)")


def _ordered(counts: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, int]]:
    """Non-zero counts in vocabulary order, then any other name alphabetically."""
    known = [(k, int(counts[k])) for k in order if counts.get(k)]
    rest = sorted((str(k), int(v)) for k, v in counts.items() if k not in order and v)
    return known + rest


def mask_key(value: Any) -> str:
    """A review key as the page may show it: already masked, empty, or masked here."""
    text = "" if value is None else str(value).strip()
    if not text or text.startswith(REVIEW_KEY_MASK_PREFIX):
        return text
    return REVIEW_KEY_MASK_PREFIX + text[-4:]


def _kv_table(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table of label and (already escaped) value."""
    body = "".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class=\"kv\"><tbody>{body}</tbody></table>\n"


# --- sections --------------------------------------------------------------------------------


def _head(summary: Mapping[str, Any]) -> str:
    title = f"batch-toggle {summary.get('command', '')} report {summary.get('run_id', '')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"batch-toggle {_e(summary.get('version'))}\">\n"
        f"<title>{_e(title.strip())}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
    )


def _header(summary: Mapping[str, Any]) -> str:
    inputs = ", ".join(Path(str(i.get("file", ""))).name for i in summary.get("inputs") or [])
    exit_code = summary.get("exit_code")
    stopped = summary.get("stopped") or {}
    extra = ""
    if stopped.get("message"):
        extra = f"<br>{_e(stopped['message'])}"
    notes = "".join(f"<p class=\"note\">Note: {_e(n)}</p>" for n in summary.get("notes") or [])
    return (
        f"<header>\n<h1>batch-toggle {_e(summary.get('command', ''))} report</h1>\n"
        f"<p class=\"sub\">{_e(inputs)} &middot; {_n(summary.get('rows', 0))} rows &middot; "
        f"run <code>{_e(summary.get('run_id'))}</code> &middot; "
        f"{_e(summary.get('finished_at') or summary.get('started_at'))}</p>\n"
        f"<div class=\"verdict {verdict_class(exit_code)}\" id=\"verdict\" "
        f"data-exit-code=\"{_e(exit_code)}\"><strong>Exit code {_e(exit_code)}</strong> &mdash; "
        f"{_e(summary.get('verdict'))}{extra}</div>\n{notes}</header>\n"
    )


def _evidence(summary: Mapping[str, Any]) -> str:
    report = summary.get("report") or {}
    rows = [
        ("Tool", _e(f"{summary.get('tool', 'batch-toggle')} {summary.get('version', '')}")),
        ("Command", f"<code>{_e(summary.get('command'))}</code>"),
        ("Run id", f"<code>{_e(summary.get('run_id'))}</code>"),
        ("User and host", _e(f"{summary.get('user', '')}@{summary.get('host', '')}")),
        ("Platform", _e(summary.get("platform"))),
        ("Started (UTC)", _e(summary.get("started_at"))),
        ("Finished (UTC)", _e(summary.get("finished_at"))),
        ("Duration", _e(format_duration(float(summary.get("duration_s") or 0)))),
        ("Exit code", _e(summary.get("exit_code"))),
        ("Verdict", _e(summary.get("verdict"))),
        ("Report", f"<code>{_e(report.get('path'))}</code>"),
        ("Report sha256", f"<code>{_e(report.get('sha256'))}</code>"),
    ]
    rejects = summary.get("rejects")
    if rejects:
        rows.append(("Rejects (unmasked)",
                     f"<code>{_e(rejects.get('path'))}</code> ({_n(rejects.get('rows'))} rows)"))
    return ("<section class=\"evidence\">\n<h2>Evidence</h2>\n" + _kv_table(rows)
            + _inputs_table(summary.get("inputs") or []) + _options_table(summary) + "</section>\n")


def _inputs_table(inputs: Sequence[Mapping[str, Any]]) -> str:
    if not inputs:
        return ""
    head = ("<thead><tr><th>Input</th><th class=\"num\">Rows</th><th>Encoding</th>"
            "<th>sha256</th><th>Columns used</th></tr></thead>")
    body = []
    for item in inputs:
        columns = ", ".join(f"{k} &larr; {_e(v)}" for k, v in (item.get("columns") or {}).items())
        sheet = f" (sheet {_e(item['sheet'])})" if item.get("sheet") else ""
        body.append(f"<tr><td><code>{_e(item.get('file'))}</code>{sheet}</td>"
                    f"<td class=\"num\">{_n(item.get('rows'))}</td><td>{_e(item.get('encoding'))}"
                    f"</td><td><code>{_e(item.get('sha256'))}</code></td><td>{columns}</td></tr>")
    return f"<table class=\"inputs\">{head}<tbody>{''.join(body)}</tbody></table>\n"


def _options_table(summary: Mapping[str, Any]) -> str:
    options = summary.get("options") or {}
    shown = [(k, v) for k, v in options.items() if v not in (None, {}, [], "")]
    if not shown:
        return ""
    cells = [f"<th scope=\"row\">--{_e(k.replace('_', '-'))}</th>"
             f"<td><code>{_e(_option_text(v))}</code></td>" for k, v in shown]
    per_row = 3
    body = "".join("<tr>" + "".join(cells[i:i + per_row]) + "</tr>"
                   for i in range(0, len(cells), per_row))
    return f"<h3>Options</h3>\n<table class=\"kv options\"><tbody>{body}</tbody></table>\n"


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _outcome_charts(summary: Mapping[str, Any]) -> str:
    statuses = _ordered(summary.get("counts_by_status") or {}, STATUSES)
    codes = _ordered(summary.get("counts_by_error_code") or {}, ERROR_CODES)
    status_chart = bar_chart("chart-status", "Rows by status",
                             [(s, n, _status_class(s)) for s, n in statuses])
    code_chart = (bar_chart("chart-error-code", "Rows by error code",
                            [(c, n, "bad") for c, n in codes]) if codes
                  else "<figure><figcaption>Rows by error code</figcaption>"
                       "<p class=\"note\">No row has an error code.</p></figure>")
    return (f"<section class=\"outcome\">\n<h2>Outcome</h2>\n<div class=\"grid\">\n"
            f"{status_chart}{code_chart}</div>\n</section>\n")


def bar_chart(chart_id: str, caption: str, items: Sequence[tuple[str, int, str]]) -> str:
    """A horizontal bar chart as inline SVG: one labelled bar per (name, count, colour class).
    Each bar carries data-key and data-count so that a reader (or a test) can check it."""
    if not items:
        return (f"<figure><figcaption>{_e(caption)}</figcaption>"
                "<p class=\"note\">No rows.</p></figure>\n")
    label_w, bar_w, count_w, row_h = 170, 330, 70, 24
    width, height = label_w + bar_w + count_w, row_h * len(items) + 8
    top = max(n for _, n, _ in items) or 1
    bars = []
    for i, (name, count, kind) in enumerate(items):
        y = 4 + i * row_h
        w = max(1.0, bar_w * count / top)
        bars.append(
            f"<g><title>{_e(name)}: {count:,}</title>"
            f"<text x=\"{label_w - 8}\" y=\"{y + 16}\" text-anchor=\"end\">{_e(name)}</text>"
            f"<rect class=\"bar\" data-key=\"{_e(name)}\" data-count=\"{count}\" x=\"{label_w}\" "
            f"y=\"{y + 3}\" width=\"{w:.1f}\" height=\"{row_h - 6}\" rx=\"2\" "
            f"style=\"fill:{_colour(kind)}\"/>"
            f"<text x=\"{label_w + w + 6:.1f}\" y=\"{y + 16}\">{count:,}</text></g>")
    return (f"<figure><figcaption>{_e(caption)}</figcaption>"
            f"<svg class=\"chart\" id=\"{_e(chart_id)}\" role=\"img\" aria-label=\"{_e(caption)}\" "
            f"viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">"
            f"{''.join(bars)}</svg></figure>\n")


def _estimate_text(plan: Mapping[str, Any]) -> str:
    """`12 h 16 min at 2500/h`, and the range while no reply latency was known."""
    text = f"{plan.get('estimated_duration', '')} at {plan.get('rate', '')}"
    spread = plan.get("estimated_duration_range", "")
    if plan.get("latency_source") == ASSUMED and " to " in spread:
        text += (f" ({spread}, as replies take {latency_text(LATENCY_LOW)} to "
                 f"{latency_text(LATENCY_HIGH)})")
    return text


def _sending(summary: Mapping[str, Any]) -> str:
    plan = summary.get("plan") or {}
    rows = [
        ("Requests the plan needed", _n(plan.get("requests_needed"))),
        ("Estimated at the budget", _e(_estimate_text(plan))),
        ("Requests sent", _n(summary.get("requests_sent", 0))),
        ("429 responses", _n(summary.get("responses_429", 0))),
        ("Retries", _n(summary.get("retries", 0))),
    ]
    stopped = summary.get("stopped") or {}
    if stopped:
        rows.append(("Stopped", _e(f"{stopped.get('code')}: {stopped.get('message')}")))
        if stopped.get("resume_after"):
            rows.append(("Resume after", _e(stopped["resume_after"])))
    return ("<section class=\"sending\">\n<h2>Requests</h2>\n" + _kv_table(rows)
            + timeline_chart(summary) + "</section>\n")


def timeline_chart(summary: Mapping[str, Any]) -> str:
    """Requests per time bucket (bars), 429 responses (red marks above the bars) and the time
    spent waiting for the budget (amber shading, darker = longer), as inline SVG."""
    timeline = summary.get("timeline")
    if not timeline:
        return ("<p class=\"note\" id=\"timeline-note\">Nothing was sent: this report is a plan "
                "(<code>validate</code> or <code>run --dry-run</code>); no request was made.</p>\n")
    requests = [int(x) for x in timeline.get("requests") or []]
    limited = [int(x) for x in timeline.get("responses_429") or []]
    waits = [float(x) for x in timeline.get("wait_s") or []]
    if not any(requests) and not any(limited):
        return "<p class=\"note\" id=\"timeline-note\">No request was needed.</p>\n"
    width_s = float(timeline.get("bucket_s") or 1.0)
    n = max(len(requests), len(limited), len(waits))
    left, plot_w, plot_h, top = 48, 860, 170, 22
    step = plot_w / n
    peak = max(requests) or 1
    parts: list[str] = []
    for i in range(n):
        x = left + i * step
        wait = waits[i] if i < len(waits) else 0.0
        if wait > 0:
            share = min(1.0, wait / width_s)
            parts.append(f"<rect class=\"wait\" data-wait-s=\"{wait:.1f}\" x=\"{x:.2f}\" "
                         f"y=\"{top}\" width=\"{step:.2f}\" height=\"{plot_h}\" "
                         f"style=\"fill:var(--wait);fill-opacity:{0.25 + 0.75 * share:.2f}\">"
                         f"<title>waiting {wait:.0f} s</title></rect>")
        count = requests[i] if i < len(requests) else 0
        if count:
            h = plot_h * count / peak
            parts.append(f"<rect class=\"req\" data-count=\"{count}\" x=\"{x:.2f}\" "
                         f"y=\"{top + plot_h - h:.2f}\" width=\"{max(step - 1, 0.8):.2f}\" "
                         f"height=\"{h:.2f}\" style=\"fill:var(--req)\"><title>{count:,} "
                         f"requests</title></rect>")
        hits = limited[i] if i < len(limited) else 0
        if hits:
            parts.append(f"<rect class=\"r429\" data-count=\"{hits}\" x=\"{x:.2f}\" "
                         f"y=\"{top - 12}\" width=\"{max(step - 1, 2):.2f}\" height=\"8\" "
                         f"style=\"fill:var(--bad)\"><title>{hits:,} responses 429</title></rect>")
    axis = _timeline_axis(timeline, n, width_s, left, plot_w, plot_h, top, peak)
    total_w, total_h = left + plot_w + 20, top + plot_h + 40
    legend = (
        "<p class=\"legend\"><span><i class=\"swatch\" style=\"background:var(--req)\"></i>"
        f"requests per {format_duration(width_s)}</span>"
        "<span><i class=\"swatch\" style=\"background:var(--bad)\"></i>429 responses</span>"
        "<span><i class=\"swatch\" style=\"background:var(--wait)\"></i>waiting for the budget "
        "(window full, 429 pause; darker: longer)</span></p>"
    )
    return (f"<figure><figcaption>Timeline</figcaption><svg class=\"chart\" id=\"chart-timeline\" "
            f"role=\"img\" aria-label=\"Requests, 429 responses and budget waits over time\" "
            f"viewBox=\"0 0 {total_w} {total_h}\" xmlns=\"http://www.w3.org/2000/svg\">"
            f"{''.join(parts)}{axis}</svg>{legend}"
            f"<p class=\"note\">{_n(sum(requests))} requests, {_n(sum(limited))} responses 429, "
            f"{_e(format_duration(sum(waits)))} waiting for the budget.</p></figure>\n")


def _timeline_axis(timeline: Mapping[str, Any], n: int, width_s: float, left: float,
                   plot_w: float, plot_h: float, top: float, peak: int) -> str:
    """Axes with the peak count, and 5 time ticks as UTC clock times from the timeline start."""
    base = top + plot_h
    out = [f"<line class=\"axis\" x1=\"{left}\" y1=\"{base}\" x2=\"{left + plot_w}\" "
           f"y2=\"{base}\"/>",
           f"<line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{base}\"/>",
           f"<text x=\"{left - 6}\" y=\"{top + 10}\" text-anchor=\"end\">{peak:,}</text>",
           f"<text x=\"{left - 6}\" y=\"{base}\" text-anchor=\"end\">0</text>"]
    start = parse_utc(timeline.get("started_at"))
    span = n * width_s
    for k in range(5):
        frac = k / 4
        x = left + plot_w * frac
        offset = span * frac
        label = (f"{start + timedelta(seconds=offset):%H:%M:%S}" if start is not None
                 else f"+{format_duration(offset)}")
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        out.append(f"<line class=\"axis\" x1=\"{x:.1f}\" y1=\"{base}\" x2=\"{x:.1f}\" "
                   f"y2=\"{base + 4}\"/><text x=\"{x:.1f}\" y=\"{base + 18}\" "
                   f"text-anchor=\"{anchor}\">{_e(label)}</text>")
    out.append(f"<text x=\"{left + plot_w / 2:.1f}\" y=\"{base + 36}\" text-anchor=\"middle\">"
               f"time (UTC) &middot; {_e(format_duration(span))} in all</text>")
    return "".join(out)


# --- rows that need attention ----------------------------------------------------------------


def _waiting(summary: Mapping[str, Any]) -> str:
    """A slice that ended (exit 4 or 130, resumable): the rows not sent yet wait for the next
    slice. Said apart from the rows that need attention, which they are not."""
    waiting = summary.get("waiting") or {}
    if not waiting:
        return ""
    return (f"<p class=\"note\" id=\"waiting\"><strong>Waiting: {_n(waiting.get('rows', 0))} "
            "rows</strong> are not sent yet: this run stopped early and resumes, and the next "
            "slice (<code>run --resume</code>) sends them. They are <code>not_attempted</code> "
            "in the report, not listed below and not in the <code>--rejects</code> file until "
            "the job is finished or stopped for good.</p>\n")


def _attention(summary: Mapping[str, Any], report: pa.Table, limit: int) -> str:
    rows, total = attention_rows(summary, report, limit)
    title = "<h2>Rows that need attention</h2>\n" + _waiting(summary)
    what = ("invalid, in conflict, failed or mismatched" if summary.get("waiting")
            else "invalid, in conflict, failed, mismatched or not attempted")
    if total == 0:
        return (f"<section class=\"attention\" id=\"attention\">\n{title}<p class=\"note\">None: "
                f"no row is {what}.</p></section>\n")
    head = "".join(f"<th>{_e(h)}</th>" for h, _ in _ATTENTION_COLUMNS)
    body = "".join(_attention_row(r) for r in rows)
    inputs = summary.get("inputs") or []
    where = (f" (<code>row</code>: the data row of {_e(Path(str(inputs[0].get('file'))).name)})"
             if len(inputs) == 1 else " (<code>row</code>: file and data row)")
    intro = (f"<p>{_n(total)} rows are {what}"
             f"{where}. Review keys are masked; <code>--rejects PATH</code> writes these rows "
             "unmasked, in the input's own layout, ready to fix and re-run.</p>\n")
    more = ""
    if total > len(rows):
        more = (f"<p class=\"note\" id=\"attention-more\">Showing the first {_n(len(rows))} of "
                f"{_n(total)}: {_n(total - len(rows))} more are in the report (filter on "
                "<code>status</code>) and in the file that <code>--rejects</code> writes.</p>\n")
    return (f"<section class=\"attention\" id=\"attention\">\n{title}{intro}"
            f"<div class=\"scroll\"><table class=\"attention\" id=\"attention-table\"><thead>"
            f"<tr>{head}</tr></thead><tbody>{body}</tbody></table></div>\n{more}</section>\n")


def _attention_row(row: Mapping[str, Any]) -> str:
    cells = []
    for _, key in _ATTENTION_COLUMNS:
        value = row.get(key)
        if key == "_ref":
            cells.append(f"<td class=\"mono nowrap\" title=\"{_e(row.get('source_file'))}\">"
                         f"{_e(value)}</td>")
        elif key == "status":
            cells.append(f"<td class=\"status-{_status_class(str(value))}\">{_e(value)}</td>")
        elif key == "_key":
            cells.append(f"<td class=\"mono nowrap\">{_e(short_mask(value))}</td>")
        elif key in ("job_id", "error_code"):
            cells.append(f"<td class=\"mono nowrap\">{_e(value)}</td>")
        else:
            cells.append(f"<td>{_e(_cell(value))}</td>")
    return (f"<tr data-status=\"{_e(row.get('status'))}\" data-row=\"{_e(row.get('source_row'))}\">"
            f"{''.join(cells)}</tr>")


def short_mask(masked: Any) -> str:
    """The table's compact form of a masked key: `****` and the last 4 characters."""
    text = mask_key(masked)
    return "****" + text[len(REVIEW_KEY_MASK_PREFIX):] if text else ""


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def attention_rows(summary: Mapping[str, Any], report: pa.Table,
                   limit: int = ATTENTION_LIMIT) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` rows that need attention (input order) and how many there are in all.
    Column-wise filter, then only the kept rows become Python objects: cheap for 1M rows."""
    if report.num_rows == 0 or "status" not in report.column_names:
        return [], 0
    hits = report.filter(attention_mask(report, waiting=bool(summary.get("waiting"))))
    total = hits.num_rows
    keys = review_key_columns(summary, report.column_names)
    several = len(summary.get("inputs") or []) > 1  # name the file only when there are several
    columns = [c for c in ("source_file", "source_row", "job_id", "update_target",
                           "do_notify_sms", "status", "error_code", "error_message")
               if c in report.column_names]
    kept = hits.slice(0, max(0, limit)).select(columns + keys).to_pylist()
    rows = []
    for item in kept:
        key = next((item[k] for k in keys if item.get(k) not in (None, "")), "")
        item = {c: item.get(c) for c in columns}
        item["_key"] = mask_key(key)
        item["_ref"] = (f"{Path(str(item.get('source_file') or '')).name}:"
                        f"{item.get('source_row')}" if several else str(item.get("source_row")))
        rows.append(item)
    return rows, total


def review_key_columns(summary: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The report columns that hold an input's review key (renamed `input_<name>` when the
    input's column name equals an outcome column)."""
    found: list[str] = []
    for item in summary.get("inputs") or []:
        column = (item.get("columns") or {}).get("review_key")
        if column is None:
            continue
        name = f"input_{column}" if column in OUTCOME_COLUMNS else column
        if name in names and name not in found:
            found.append(name)
    return found


# --- glossary and footer ---------------------------------------------------------------------


def _meanings(summary: Mapping[str, Any]) -> str:
    present = [s for s, _ in _ordered(summary.get("counts_by_status") or {}, STATUSES)]
    items = "".join(f"<dt>{_e(s)}</dt><dd>{_e(STATUS_MEANING.get(s, ''))}</dd>" for s in present)
    if not items:
        return ""
    return (f"<section class=\"meanings\">\n<h2>What the statuses mean</h2>\n"
            f"<dl class=\"meanings\">{items}</dl>\n</section>\n")


def _footer(summary: Mapping[str, Any]) -> str:
    return (f"<footer>Written by batch-toggle {_e(summary.get('version'))}. The summary JSON "
            "beside the report holds the same evidence in machine-readable form. Review keys "
            "are masked on this page; the API key is never written anywhere.</footer>\n")


__all__ = ["ATTENTION_LIMIT", "STATUS_MEANING", "attention_rows", "html_path", "mask_key",
           "render_html", "short_mask", "write_html_report"]
