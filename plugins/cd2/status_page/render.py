"""The page as plain server-rendered HTML."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cd2.contract import Outcome
from cd2.status_page.rows import TableStatus
from cd2.summary import format_duration

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
p.facts { color: #555; margin: 0 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .7rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.stale td.lag, .problem { color: #b42318; font-weight: 600; }
.outcome-failed { color: #b42318; font-weight: 600; }
.outcome-busy, .outcome-running, .outcome-queued { color: #b54708; }
.error { color: #b42318; white-space: normal; max-width: 40rem; }
.action { color: #1a1a1a; }
"""


def _cell(value: Any, css: str = "") -> str:
    text = "-" if value is None else html.escape(str(value))
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def render_html(statuses: Sequence[TableStatus], *, now: datetime, problems: Iterable[str] = ()) -> str:
    """The page: a line of counts, any problem reading the data, then one row per table.

    Links are relative to the page (served at ``<UI root>/cd2-status/``) and open in the top window, so
    they work from the UI's embedded view and behind a path prefix.
    """
    stale = sum(s.stale for s in statuses)
    failed = sum(s.outcome == Outcome.FAILED for s in statuses)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>CD2 replica status</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Canvas Data 2 replica</h1>",
        f'<p class="facts">{len(statuses)} tables, {stale} stale, {failed} failed; as of '
        f"{html.escape(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}. "
        '<a href="api/tables">JSON</a></p>',
    ]
    lines += [f'<p class="problem">{html.escape(problem)}</p>' for problem in problems]
    # An instance column only where there is more than one instance: one instance's page is unchanged.
    several = len({s.instance for s in statuses}) > 1
    lines.append(
        "<table><thead><tr>"
        + ("<th>Instance</th>" if several else "")
        + "<th>Table</th><th>Watermark (UTC)</th><th>Lag</th><th>Bound</th>"
        "<th>Rows</th><th>Oldest row (UTC)</th><th>Schema</th><th>Last outcome</th><th>Run</th><th>Error</th></tr></thead><tbody>"
    )
    for s in statuses:
        lag = format_duration(s.lag_seconds) if s.lag_seconds is not None else None
        rows = None if s.rows is None else f"{'~' if s.rows_estimated else ''}{s.rows:,}"
        run = "-"
        if s.ui_path and s.run_id:
            run = f'<a href="../{html.escape(s.ui_path)}" target="_top">{html.escape(s.run_id)}</a>'
        outcome = html.escape(s.outcome_text) if s.outcome_text else "-"
        error = html.escape(s.error or "")
        if s.action:
            error += f'<br><span class="action">Action: {html.escape(s.action)}.</span>'

        lines.append(
            f'<tr class="{"stale" if s.stale else "fresh"}">'
            + (_cell(s.instance) if several else "")
            + _cell(s.table)
            + _cell(s.watermark.strftime("%Y-%m-%d %H:%M:%S") if s.watermark else None)
            + _cell(f"{lag} (stale)" if s.stale else lag, "num lag")
            + _cell(f"{s.freshness_hours:,.10g}h", "num")
            + _cell(rows, "num")
            + _cell(s.oldest_row.strftime("%Y-%m-%d %H:%M:%S") if s.oldest_row else None)
            + _cell(s.schema_version, "num")
            + f'<td class="outcome-{html.escape(s.outcome or "none")}">{outcome}</td>'
            + f"<td>{run}</td>"
            + f'<td class="error">{error}</td>'
            + "</tr>"
        )
    lines += ["</tbody></table>", "</body></html>"]
    return "\n".join(lines) + "\n"
