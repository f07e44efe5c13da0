"""`syncrun test-read`: the dry run's explanation of each entity, from the Traces a dry run collects.

Per entity: the request URLs (secrets masked), the status, the time, a body excerpt, the outcome and
the rule that decided it, the error if any, the status columns a success would stamp and the rows
each table would get (for a delete: each table's rows that would go, or that its on_delete keeps).
It prints what `run --dry-run --ids` computed on the same code path; nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from runner import deletes, spec
from runner.redaction import Redactor

if TYPE_CHECKING:
    from runner.engine import Report, Trace

_WIDTH = 100


def _value(value: Any, redact: Redactor) -> str:
    """`value` as JSON (else repr), its strings redacted *before* they are escaped, and the text after."""
    clean = redact.value(value)
    try:
        text = json.dumps(clean, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(clean)
    return redact(text)


def explain(report: Report, source: spec.Source, redact: Redactor) -> str:
    """The explanation of one source's dry run, as text."""
    lines: list[str] = []
    for trace in report.traces:
        lines += _entity(trace, source, redact)
    asked = len(report.traces)
    c = report.counters
    lines.append(
        f"{source.name}: {asked} entit{'y' if asked == 1 else 'ies'} read — {c.succeeded} success, {c.skipped} skip,"
        f" {c.failed} error{f', {c.deleted} delete' if c.deleted else ''}; {c.requests} request(s)."
        " Dry run: nothing was written."
    )
    if report.capped:
        lines.append(
            f"{source.name}: {report.capped} entity listing{'' if report.capped == 1 else 's'} capped (not complete):"
            " a run would write the pages read, and no `when: complete` step would run."
        )
    if report.error:
        lines.append(f"{source.name}: the run stopped: {redact(report.error)}")
    return "\n".join(lines) + "\n"


def _entity(trace: Trace, source: spec.Source, redact: Redactor) -> list[str]:
    result = trace.result
    key = result.key if result is not None else trace.entity.get(source.entities.key)
    head = f"── {source.name} {source.entities.key}={redact(str(key))} "
    lines = [head + "─" * max(0, _WIDTH - len(head))]
    others = {k: v for k, v in trace.entity.items() if k != source.entities.key}
    if others:
        lines.append(f"  entity    {_value(others, redact)}")
    for url in trace.requests:
        lines.append(f"  request   {source.request.method} {redact(url)}")
    if trace.status is not None:
        lines.append(f"  response  HTTP {trace.status} in {trace.elapsed * 1000:.0f} ms")
        lines.append(f"  body      {redact(trace.excerpt)}")
    if result is None:
        lines.append("  outcome   (not classified: the run stopped first)")
        return lines
    rule = f" (decided by: {trace.rule})" if trace.rule else ""
    lines.append(f"  outcome   {result.outcome.value}{rule}")
    if result.error:
        lines.append(f"  error     {redact(result.error)}")
    if trace.capped:
        lines.append(f"  capped    {trace.capped}: the listing has more pages, not read")
    if result.outcome is spec.Outcome.SKIP_UNTIL and result.skip_until:
        lines.append(f"  skip for  {result.skip_until:g} s")
    if source.status is not None:
        stamped = "yes" if result.stamped else "no"
        lines.append(f"  stamp     {source.status.table}.{source.status.column}: {stamped}")
        for column, value in sorted(result.status_values.items()):
            lines.append(f"  status    {source.status.table}.{column} = {_value(value, redact)}")
    if result.outcome is spec.Outcome.DELETE:  # what a real run would remove, in the order it would
        lines += [f"  {line}" for line in deletes.described(source, trace.entity)]
    for index, write in enumerate(source.writes):
        rows = result.rows.get(index, [])
        if result.outcome is not spec.Outcome.SUCCESS:
            continue
        target = write.function or write.table
        lines.append(f"  {target}: {len(rows)} row(s)")
        for row in rows:
            lines.append(f"    {_value(row, redact)}")
    return lines


def print_reports(
    reports: Sequence[Report], sources: Sequence[spec.Source], redact: Redactor, out: TextIO | None = None
) -> None:
    """Print `explain` for each report (matched to its source by name)."""
    import sys

    by_name = {source.name: source for source in sources}
    for report in reports:
        print(explain(report, by_name[report.source], redact), end="", file=out or sys.stdout)
