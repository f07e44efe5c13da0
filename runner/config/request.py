"""`request:` and `auth:`: the templates a request is built from, and the credentials sent with it."""

from __future__ import annotations

import re

from runner import authblocks, spec, templating
from runner.config.builder import Builder
from runner.expressions import JSON
from runner.redaction import Redactor
from runner.sourcefile import Path_, did_you_mean

# Headers that say where a request ends or what the connection does (review revC: `Content-Length:
# "{id}"` sent on a reused connection would let an entity's value decide where the next request begins).
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"})


class RequestSection(Builder):
    """`request:` (URL, query, headers, batch) and `auth:` (runner/authblocks.py)."""

    def request(self, columns: frozenset[str] | None, listed: bool) -> spec.Request | None:
        raw = self.raw.get("request")
        if not isinstance(raw, dict):
            return None
        # Templates are checked even when another request key is wrong: they need only themselves.
        templates: dict[Path_, spec.Template | None] = {
            path: self.template(path, value, columns, listed)
            for path, value in [(("request", "url"), raw.get("url"))]
            + [(("request", part, k), v) for part in ("query", "headers") for k, v in _items(raw.get(part))]
            if isinstance(value, str | int | float) and self.usable(path)
        }
        url = templates.get(("request", "url"))
        if url is not None:
            self.check_url(url, [str(name) for name, _ in _items(raw.get("query"))])
        for name, _ in _items(raw.get("headers")):
            if str(name).lower() in FRAMING:  # a templated one would let an entity's value reframe the stream
                self.add(("request", "headers", name), "frames the request: the HTTP client sets it, not a source")
        if not self.usable(("request",)) or url is None:
            return None
        extra: dict[str, JSON] = {k: raw[k] for k in ("method", "verify_tls", "conditional") if k in raw}
        for part in ("query", "headers"):
            extra[part] = tuple((str(p[2]), t) for p, t in templates.items() if p[1] == part and t is not None)
        if "timeout" in raw:
            extra["timeout"] = self.duration(("request", "timeout"), raw["timeout"], positive=True)
        if "max_body" in raw:
            extra["max_body"] = self.size(("request", "max_body"), raw["max_body"])
        if "batch" in raw:
            extra["batch"] = self.batch(raw["batch"], columns)
        return spec.Request(url=url, **extra)

    def auth(self) -> spec.Auth | None:
        raw = self.section("auth")
        if not isinstance(raw, dict):
            return None
        if "use" in raw:
            auth = authblocks.use(self, str(raw["use"]), self.project.auth, self.project.file)
        else:
            auth = authblocks.block(self, raw, ("auth",))
        if auth is not None:
            authblocks.check_overlap(self, self.raw.get("request"), auth)
        return auth

    def batch(self, raw: JSON, columns: frozenset[str] | None) -> spec.Batch | None:
        roots = self.mapping_roots(columns, record=False)  # evaluated over the mapping context (engine.batches.part)
        record = self.expression(("request", "batch", "record"), raw["record"], roots)
        extra = {k: raw[k] for k in ("separator",) if k in raw}
        return None if record is None else spec.Batch(size=raw["size"], param=raw["param"], record=record, **extra)

    def template(self, path: Path_, value: JSON, columns: frozenset[str] | None, listed: bool) -> spec.Template | None:
        try:
            template = templating.parse(value if isinstance(value, str) else str(value))
        except ValueError as error:
            self.add(path, str(error))
            return None
        for column in sorted(template.columns):
            if listed:
                self.add(path, f"{{{column}}}: a list source has no entity columns to fill in")
            elif columns is not None and column not in columns:
                have = ", ".join(sorted(columns))
                self.add(
                    path,
                    f"{{{column}}} is not an entity column (have: {have}{did_you_mean(column, columns, inside=True)})",
                )
        self.check_text(path, template)
        return template

    def check_text(self, path: Path_, template: spec.Template) -> None:
        """What the file itself puts in a request: one line of text, and ASCII in a header (httpx
        sends header values as ASCII). Settings' values are checked at run start (runner/preflight.py)."""
        if path == ("request", "url") and not template.settings:
            return  # check_url parses the whole URL
        written = "".join(
            s.text if isinstance(s, spec.Literal) else s.default or ""
            for s in template.segments
            if not isinstance(s, spec.Column)
        )
        if (char := next((c for c in written if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)) is not None:
            self.add(path, f"contains a control character (U+{ord(char):04X}): a request value is one line of text")
        elif path[1] == "headers" and (char := next((c for c in written if not c.isascii()), None)) is not None:
            self.add(path, f"contains a non-ASCII character (U+{ord(char):04X}): HTTP header values must be ASCII")
        # review revH F3: a default is the file's text, not a CI variable's; run start would blame CI
        for setting in template.settings:
            if setting.default and setting.default != setting.default.strip():
                self.add(path, f"{templating.written(setting)}: {templating.DEFAULT_SPACES}")

    def check_url(self, url: spec.Template, query: list[str]) -> None:
        """`query`: request.query's names (a name also in the URL's own query would be sent twice)."""
        first = url.segments[0] if url.segments else None
        if isinstance(first, spec.Literal) and not re.match(r"https?://", first.text, re.IGNORECASE):
            self.add(("request", "url"), "must start with http:// or https:// (or a setting such as ${env.API_URL})")
        elif all(s.default for s in url.settings):  # all written in the file: check the whole URL now
            placeholders = dict.fromkeys(url.columns, "0")
            rendered = templating.render(url, placeholders, templating.Settings({}, Redactor()), url=True)
            if reason := templating.url_problem(rendered) or templating.query_problem(rendered, query):
                self.add(("request", "url"), f"is not a usable URL{templating.with_defaults(url)}: {reason}")
        head = ""
        for segment in url.segments:
            if isinstance(segment, spec.Column):
                if "/" not in re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", head):
                    self.add(
                        ("request", "url"), f"{{{segment.name}}} would be in the host: put entity values in the path"
                    )
                return
            head += segment.text if isinstance(segment, spec.Literal) else "x"


def _items(value: JSON) -> list[tuple[str, JSON]]:
    return list(value.items()) if isinstance(value, dict) else []
