-- syncrun migration 0001: syncrun's own tables (applied once, recorded in syncrun_migrations).
-- They live in the first schema of the search_path, like the unqualified names syncrun uses for them.
-- The seed-shaped tables (sync_jobs, sync_status) are not here: their names come from the sources
-- (`status.table`, the jobs table), so runner/sql/jobs_table.sql and status_table.sql are re-applied,
-- idempotently, on every `syncrun migrate`.

-- one row per (source, entity). Selection reads it; a storefront failure never delays another
-- source for the same entity. entity_key is the key as text, so int and text keys share a table.
create table if not exists syncrun_state (
    source text not null,
    entity_key text not null,
    consecutive_errors int not null default 0,
    last_error text,
    last_error_at timestamptz,
    next_attempt_at timestamptz,
    skip_until timestamptz,
    last_success_at timestamptz,
    claimed_by text,
    claim_expires_at timestamptz,
    updated_at timestamptz not null default now(),
    primary key (source, entity_key)
);
create index if not exists syncrun_state_claims on syncrun_state (source, claim_expires_at);

-- list-shaped sources checkpoint their cursor here after each committed page.
create table if not exists syncrun_cursors (
    source text primary key,
    cursor jsonb,
    job_id uuid,
    updated_at timestamptz not null default now()
);
