-- syncrun migration 0007: transient failures count (runner/backoff.py). transient_runs: the runs in a
-- row, since the entity's last success, in which it failed transiently (retries exhausted on 5xx, 429,
-- timeouts); once it reaches the source's backoff.transient_runs the entity backs off like a
-- definitive failure. A success or skip resets it; `syncrun status` counts the entities that have one.
alter table syncrun_state add column if not exists transient_runs int not null default 0;
