"""Every error syncrun raises on purpose, and the exit code each one means.

SyncrunError                       base; `exit_code` says what the CLI returns
├── ConfigError                    a source file is wrong; lists every Problem      (exit 2)
├── UsageError                     bad arguments or environment (BATCH_SIZE=abc)   (exit 2)
├── SettingError                   a ${env.X}/${secret.X} is unset at run start     (exit 2)
├── SchemaMismatch                 the database lacks a table/column a source needs (exit 2)
├── DatabaseError                  PostgreSQL or Redis unreachable or failing      (exit 1)
│   ├── StoreUnreachable           a shared rate limit's connection failed (retried first)
│   └── SelectionError             the selection's query or column settings fail   (exit 2)
├── RunFailed                      the run as a whole failed (Retry-After beyond max_wait,
│                                  circuit breaker, fail_ratio exceeded)           (exit 1)
└── EntityError                    one entity failed; the run goes on (never reaches the CLI)
    ├── FetchError                 HTTP failure after retries, timeout, body too big, bad body
    │   ├── PaginationError        paging would lose items: more promised but no next page, a loop,
    │   │                          a next URL to another origin (a list source: the run fails)
    │   └── Transient              retryable failure that exhausted its attempts (no penalty)
    ├── OutcomeError               an outcome rule classified the response as `error`
    ├── MappingError               a JMESPath mapping failed or produced an unusable value
    └── WriteError                 a value does not fit its column; table, column, value

ExpressionTooComplex (a ValueError, not a SyncrunError): a JMESPath text too long or too deeply
nested to parse safely; raised by `Expression.compile`, reported by config as a Problem.

Messages never contain secret values: every message that can carry API data passes through
the run's redactor before it is logged or stored.
"""

from __future__ import annotations

from dataclasses import dataclass


class SyncrunError(Exception):
    exit_code = 1


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a source file: `file:line: path: message`."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '(top)'}: {self.message}"


class ConfigError(SyncrunError):
    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(SyncrunError):
    exit_code = 2


class SettingError(SyncrunError):
    exit_code = 2


class SchemaMismatch(SyncrunError):
    exit_code = 2


class DatabaseError(SyncrunError):
    exit_code = 1

    @classmethod
    def refused(cls, error: Exception) -> DatabaseError:
        """The database refused one of the run's own statements (a trigger, a permission): the run's
        failure with the server's message (exit 1), not a traceback (exit 70)."""
        return cls(f"the database refused: {type(error).__name__}: {error}")


class StoreUnreachable(DatabaseError):
    """A shared rate limit's store (PostgreSQL, Redis) could not be reached, or the connection broke
    during a call: the limiter reconnects and retries (database.RECONNECT_WAITS) before this reaches
    the run. A failed statement on a healthy connection is a plain DatabaseError: not ours to retry."""


class SelectionError(DatabaseError):
    """Selecting entities failed because of the source's own settings (its `entities.sql`, function
    or column names): the message names the setting. A DatabaseError, so a run that meets it mid-way
    fails like any database failure; found by the check at run start, it exits 2."""

    exit_code = 2


class RunFailed(SyncrunError):
    exit_code = 1


class Stopped(SyncrunError):
    """The run was stopped (a signal, --max-runtime) while this request waited for its rate-limit
    grant: it never left, and its entity is left for a later run (neither failed nor penalised)."""


class EntityError(SyncrunError):
    """One entity failed. `definitive` failures advance the entity's backoff; others do not."""

    definitive = True


class FetchError(EntityError):
    pass


class PaginationError(FetchError):
    """Paging cannot go on without losing items or trust: the API said there is more but gave no way
    there, a loop, a next URL to another origin, a cursor that is not a string or a number. For a
    list-shaped source it fails the run: its listing would be partial."""


class Transient(FetchError):
    """A retryable failure (5xx, 429, timeout, connection error) that used up its attempts."""

    definitive = False


class OutcomeError(EntityError):
    pass


class MappingError(EntityError):
    pass


class WriteError(EntityError):
    pass


class ExpressionTooComplex(ValueError):
    """A JMESPath text jmespath must not parse: its parser and evaluator recurse once per level."""
