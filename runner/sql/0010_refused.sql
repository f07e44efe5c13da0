-- syncrun migration 0010 (review13b N2, N4). syncrun_state.refused: the entity's latest attempt was
-- refused with HTTP 401/403. Recorded like any failure (last_error, last_error_at) but never counted
-- against the entity (no backoff, no transiently failed run): a refused credential is usually the
-- source's problem. `syncrun status` counts these entities; the circuit breaker does not count failures
-- of entities whose latest attempt failed, this kind included (runner/history.py).
-- Any other outcome clears it.
alter table syncrun_state add column if not exists refused boolean not null default false;
