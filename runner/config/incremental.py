"""`incremental:`: a list source's watermark, and the steps it rules out."""

from __future__ import annotations

from datetime import UTC, datetime

from runner import spec, templating, watermarks
from runner.config.builder import Builder
from runner.expressions import JSON
from runner.sourcefile import Path_, show


class IncrementalSection(Builder):
    """`incremental:` and the `after:` steps an incremental listing cannot run."""

    def incremental(
        self, columns: frozenset[str] | None, entities: spec.Entities | None, request: spec.Request | None
    ) -> spec.Incremental | None:
        """The watermark of a list source (runner/watermarks.py), and `${incremental.since}` in the
        request only where there is one."""
        raw, path = self.section("incremental"), ("incremental",)
        templates: list[tuple[Path_, spec.Template]] = [] if request is None else [(("request", "url"), request.url)]
        for part in ("query", "headers"):
            templates += [(("request", part, k), t) for k, t in getattr(request, part, ())]
        uses = [path for path, t in templates if any(s.kind == templating.WATERMARK[0] for s in t.settings)]
        if "incremental" not in self.raw:
            for where in uses:
                self.add(where, "${incremental.since} needs an incremental: block (its cursor and start)")
            return None
        if raw is None:
            return None
        if entities is not None and entities.type is not spec.SelectionType.LIST:
            self.add(path, "applies to list sources only (entities: {type: list})")
        if request is not None and not uses:
            self.add(path, "the request never uses ${incremental.since}: put it in request.query or request.url")
        source = spec.IncrementalFrom(raw.get("from", "cursor"))
        try:
            start = watermarks.parse(raw["start"], 0 if isinstance(raw["start"], int) else datetime.now(UTC))
        except ValueError as error:
            self.add((*path, "start"), str(error))
            return None
        if isinstance(start, datetime) and start > datetime.now(UTC):
            self.add((*path, "start"), f"{show(raw['start'])} is in the future: nothing would ever be asked for")
        if source is spec.IncrementalFrom.LISTING_START and isinstance(start, int):
            self.add((*path, "start"), "from: listing_start keeps a time: start must be a timestamp")
        lookback: float | int = 0
        if "lookback" in raw and isinstance(start, int):
            if not isinstance(raw["lookback"], int) or not 0 <= raw["lookback"] <= watermarks.MAX_INTEGER:
                self.add(
                    (*path, "lookback"), f"{show(raw['lookback'])} is not a whole number (the start is an integer)"
                )
            else:
                lookback = raw["lookback"]
        elif "lookback" in raw:
            lookback = self.duration((*path, "lookback"), raw["lookback"])
        cursor = None
        if "cursor" in raw:
            if source is spec.IncrementalFrom.LISTING_START:
                self.add((*path, "cursor"), "from: listing_start reads no cursor (remove it)")
            cursor = self.expression((*path, "cursor"), raw["cursor"], self.mapping_roots(columns))
        elif source is spec.IncrementalFrom.CURSOR:
            self.add(path, "cursor is required (e.g. cursor: record.updated_at), unless from: listing_start")
        return spec.Incremental(cursor=cursor, from_=source, start=start, lookback=lookback)

    def incremental_steps(self, incremental: JSON, after: JSON) -> None:
        """An incremental listing holds only what changed since the watermark: a `when: complete`
        step, written for a whole listing (the cleanup `delete … where seen_at < %(started_at)s`),
        would delete every row that did not change. Refused rather than guessed at."""
        if incremental is None or not isinstance(after, tuple):
            return
        for index, step in enumerate(after):
            if isinstance(step, spec.Step) and step.when is spec.StepWhen.COMPLETE:
                self.add(
                    ("after", index, "when"),
                    "an incremental listing reads only what changed since the watermark, never the whole"
                    " catalogue, so a `when: complete` step (a cleanup of rows not seen) would delete every"
                    " unchanged row; remove it (prune from a source without incremental:), or use"
                    " when: always for a step that does not assume a whole listing",
                )
