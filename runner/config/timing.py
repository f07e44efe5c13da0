"""`rate_limit:`, `retry:`, `backoff:`, `schedule:`: how fast and how often a source asks."""

from __future__ import annotations

import dataclasses
from typing import Any

from runner import spec
from runner.config.builder import Builder
from runner.config.units import parse_duration
from runner.expressions import JSON
from runner.sourcefile import show

# A window or token interval outside these is a typo, and the shared limiters' timestamps could not hold it.
MIN_PERIOD, MAX_PERIOD = 0.01, 365 * 86400.0

_PERIOD_WORDS = "from 10ms to 365d"


class TimingSection(Builder):
    """`rate_limit:`, `retry:`, `backoff:` and `schedule:`."""

    def schedule(self) -> spec.Schedule | None:
        raw = self.section("schedule")
        if raw is None:
            return None
        # an unknown key is a schema problem already reported, which does not stop the section being read
        return spec.Schedule(**{f.name: raw[f.name] for f in dataclasses.fields(spec.Schedule) if f.name in raw})

    def rate_limit(self, name: str) -> spec.RateLimit | None:
        raw = self.section("rate_limit")
        if raw is None:
            return None
        common: dict[str, Any] = {
            "bucket": raw.get("bucket", name),
            "shared": spec.LimitScope(raw.get("shared", "process")),
        }
        if "margin" in raw:
            margin = self.duration(("rate_limit", "margin"), raw["margin"])
            if not 0 <= margin <= 60:
                self.add(("rate_limit", "margin"), f"{show(raw['margin'])} is out of range: from 0s to 60s")
            common["margin"] = margin
        burst = raw.get("burst", 1)
        if "rate" in raw:  # the token form: `rate: 0.33/s` (the schema has checked the form and excluded requests/per)
            number, unit = str(raw["rate"]).split("/")
            if float(number) <= 0:
                self.add(("rate_limit", "rate"), f"{show(raw['rate'])} is out of range: must be more than 0")
                return None
            per = parse_duration(f"1{unit}") / float(number)  # seconds per token
            if not MIN_PERIOD <= per <= MAX_PERIOD:
                self.add(("rate_limit", "rate"), f"{show(raw['rate'])} is out of range: {_PERIOD_WORDS} per token")
                return None
            return spec.RateLimit(requests=1, per=per, burst=burst, form=spec.LimitForm.TOKEN, **common)
        if burst > raw["requests"]:
            self.add(("rate_limit", "burst"), f"{burst} is more than requests ({raw['requests']}): lower it")
        per = self.duration(("rate_limit", "per"), raw["per"], positive=True)
        if per > 0 and not MIN_PERIOD <= per <= MAX_PERIOD:  # 0: already reported by duration()
            self.add(("rate_limit", "per"), f"{show(raw['per'])} is out of range: {_PERIOD_WORDS}")
        return spec.RateLimit(requests=raw["requests"], per=per, burst=burst, **common)

    def retry(self) -> spec.Retry | None:
        raw = self.section("retry", {})
        if raw is None:
            return None
        extra: dict[str, JSON] = {k: raw[k] for k in ("attempts",) if k in raw}
        extra |= {k: float(raw[k]) for k in ("factor", "jitter") if k in raw}
        extra |= {k: self.duration(("retry", k), raw[k]) for k in ("initial", "max_delay", "max_wait") if k in raw}
        if "statuses" in raw:
            extra["statuses"] = frozenset(raw["statuses"])
        retry = spec.Retry(**extra)
        if retry.initial > retry.max_delay:
            self.add(
                ("retry", "initial"),
                f"the first backoff ({retry.initial:g}s) is above max_delay ({retry.max_delay:g}s)",
            )
        return retry

    def backoff(self) -> spec.Backoff | None:
        raw = self.section("backoff", {})
        if raw is None:
            return None
        extra: dict[str, JSON] = {
            k: self.duration(("backoff", k), raw[k], positive=True) for k in ("initial", "cap") if k in raw
        }
        extra |= {k: float(raw[k]) for k in ("factor",) if k in raw}
        extra |= {k: raw[k] for k in ("transient_runs",) if k in raw}
        backoff = spec.Backoff(**extra)
        if backoff.initial > backoff.cap:
            self.add(("backoff", "initial"), f"the first wait ({backoff.initial:g}s) is above cap ({backoff.cap:g}s)")
        return backoff
