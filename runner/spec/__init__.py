"""The frozen, typed form of a source file. `config.load` builds it; nothing downstream sees YAML.

Field names match the YAML keys (schemas/source.schema.json), so reading one tells you the other.
Durations are float seconds, sizes are int bytes, expressions are compiled, templates are parsed.

The package is one module per section of a source file; this module re-exports every name, so
`spec.Request` reads the same everywhere.
"""

from __future__ import annotations

from runner.spec.auth import Auth, AuthType, ClientAuth, KeyIn
from runner.spec.entities import Entities, EntityColumn, FunctionArg, SelectionType
from runner.spec.filters import (
    AllOf,
    AnyOf,
    Clock,
    ColumnRef,
    Condition,
    Direction,
    Filter,
    FilterOp,
    FilterValue,
    Join,
    NotOf,
    Nulls,
    OrderTerm,
)
from runner.spec.incremental import Incremental, IncrementalFrom
from runner.spec.outcomes import MessageTemplate, Outcome, OutcomeRule
from runner.spec.request import Batch, MissingNext, Pagination, PaginationType, Request
from runner.spec.source import Source
from runner.spec.steps import Step, StepWhen
from runner.spec.templates import Column, Literal, Segment, Setting, Template
from runner.spec.timing import Backoff, LimitForm, LimitScope, RateLimit, Retry, Schedule
from runner.spec.writes import Field, Lookup, Merge, OnDelete, QualifiedName, Status, Write, WriteMode

__all__ = [
    "AllOf",
    "AnyOf",
    "Auth",
    "AuthType",
    "Backoff",
    "Batch",
    "ClientAuth",
    "Clock",
    "Column",
    "ColumnRef",
    "Condition",
    "Direction",
    "Entities",
    "EntityColumn",
    "Field",
    "Filter",
    "FilterOp",
    "FilterValue",
    "FunctionArg",
    "Incremental",
    "IncrementalFrom",
    "Join",
    "KeyIn",
    "LimitForm",
    "LimitScope",
    "Literal",
    "Lookup",
    "Merge",
    "MessageTemplate",
    "MissingNext",
    "NotOf",
    "Nulls",
    "OnDelete",
    "OrderTerm",
    "Outcome",
    "OutcomeRule",
    "Pagination",
    "PaginationType",
    "QualifiedName",
    "RateLimit",
    "Request",
    "Retry",
    "Schedule",
    "Segment",
    "SelectionType",
    "Setting",
    "Source",
    "Status",
    "Step",
    "StepWhen",
    "Template",
    "Write",
    "WriteMode",
]
