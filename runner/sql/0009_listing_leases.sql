-- syncrun migration 0009 (review16b N3, N4, N1).
-- syncrun_listings: the lease a run of a list source holds on its listing (runner/listings.py), a
-- row rather than an advisory lock so that it works through transaction-mode poolers. It can be
-- taken over once expires_at has passed (no heartbeat renewed it) or job_id is no longer running.
create table if not exists syncrun_listings (
    source text primary key,
    holder text not null,
    job_id uuid,
    taken_at timestamptz not null default now(),
    expires_at timestamptz not null
);
-- syncrun_validators.row_key: the key columns of the row the entity's reply wrote in the primary
-- write's table ({"column": "value as text"}; {} when it wrote none there), so a validator is sent
-- only while that row still exists, whatever the key is mapped from (runner/conditional.py).
alter table syncrun_validators add column if not exists row_key jsonb;
