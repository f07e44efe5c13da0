-- The seed-compatible jobs table, re-applied on every migrate (idempotent). It also upgrades the
-- seed shapes: Supabase public.sync_jobs (no heartbeat_at / requests_made / metadata) and Tiger
-- ops.sync_jobs (CHECK (status in ('running','completed','failed')), widened to allow 'cancelled').
-- Placeholders in braces (jobs_table, jobs_literal, the index names) are filled by
-- runner/migrations.py with quoted identifiers/literals; nothing else is substituted.

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
-- entities an `outcome: delete` found gone (their rows removed); not in the seed shapes
alter table {jobs_table} add column if not exists items_deleted int default 0;
-- entities a 304 Not Modified showed unchanged (conditional requests): stamped, nothing rewritten
alter table {jobs_table} add column if not exists items_unchanged int default 0;
create index if not exists {jobs_index_type} on {jobs_table} (job_type, started_at desc);
create index if not exists {jobs_index_running} on {jobs_table} (heartbeat_at) where status = 'running';

-- Widen any CHECK on status that predates 'cancelled' (Tiger), keeping the constraint's name.
do $do$
declare
    c record;
begin
    for c in
        select conname from pg_constraint
        where conrelid = {jobs_literal}::regclass and contype = 'c'
          and pg_get_constraintdef(oid) like '%status%'
          and pg_get_constraintdef(oid) not like '%cancelled%'
    loop
        execute format('alter table %s drop constraint %I', {jobs_literal}::regclass, c.conname);
        execute format(
            'alter table %s add constraint %I check (status in (''running'', ''completed'', ''failed'', ''cancelled''))',
            {jobs_literal}::regclass, c.conname);
    end loop;
end
$do$;
