-- syncrun migration 0001: the seed-compatible tables and syncrun's own per-(source, entity) state.
-- Idempotent: every statement checks before it creates, so it also upgrades seed-shaped databases
-- (Supabase: public.sync_jobs without CHECK; Tiger: ops.* with CHECK) when run against them.
-- {status_table}, {jobs_table}, {key} and {key_type} are filled in by runner/migrations.py with quoted
-- identifiers; nothing else is substituted.

create table if not exists {jobs_table} (
    id uuid primary key default gen_random_uuid(),
    job_type text not null,
    started_at timestamptz default now(),
    completed_at timestamptz,
    status text default 'running',
    items_processed int default 0,
    items_succeeded int default 0,
    items_failed int default 0,
    batch_size int,
    error_message text,
    github_run_id text,
    created_at timestamptz default now(),
    items_created int default 0,
    items_updated int default 0,
    items_skipped int default 0
);
alter table {jobs_table} add column if not exists items_created int default 0;
alter table {jobs_table} add column if not exists items_updated int default 0;
alter table {jobs_table} add column if not exists items_skipped int default 0;
alter table {jobs_table} add column if not exists heartbeat_at timestamptz;
alter table {jobs_table} add column if not exists requests_made int default 0;
alter table {jobs_table} add column if not exists metadata jsonb;
create index if not exists {jobs_index_type} on {jobs_table} (job_type, started_at desc);
create index if not exists {jobs_index_running} on {jobs_table} (heartbeat_at) where status = 'running';

create table if not exists {status_table} (
    {key} {key_type} primary key,
    priority_score int default 0,
    is_syncable boolean default true,
    sync_interval_hours int default 24,
    consecutive_errors int default 0,
    last_error_source text,
    last_error_message text,
    last_error_at timestamptz
);
alter table {status_table} add column if not exists priority_score int default 0;
alter table {status_table} add column if not exists is_syncable boolean default true;
alter table {status_table} add column if not exists sync_interval_hours int default 24;
alter table {status_table} add column if not exists consecutive_errors int default 0;
alter table {status_table} add column if not exists last_error_source text;
alter table {status_table} add column if not exists last_error_message text;
alter table {status_table} add column if not exists last_error_at timestamptz;

-- syncrun's own state: one row per (source, entity). Selection reads it; a storefront failure
-- never delays another source for the same entity.
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
