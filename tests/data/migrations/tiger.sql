-- A Tiger-shaped seed database (steam-workers.md §3.1-3.3): ops.sync_jobs with metadata, updated_at
-- and CHECK (status in ('running','completed','failed')); ops.sync_status without FK, with
-- created_at/updated_at and a text last_error_source; the SQL function ops.get_apps_for_sync.
-- Tests replace the schema name `ops` with a per-test schema.
create table ops.sync_jobs (
    id uuid primary key default gen_random_uuid(),
    job_type text not null,
    started_at timestamptz default now(),
    completed_at timestamptz,
    status text default 'running' check (status in ('running', 'completed', 'failed')),
    items_processed int default 0,
    items_succeeded int default 0,
    items_failed int default 0,
    batch_size int,
    error_message text,
    github_run_id text,
    created_at timestamptz default now(),
    items_created int default 0,
    items_updated int default 0,
    items_skipped int default 0,
    metadata jsonb,
    updated_at timestamptz default now()
);
create index sync_jobs_running_started on ops.sync_jobs (started_at) where status = 'running';

create table ops.sync_status (
    appid int primary key,
    last_steamspy_sync timestamptz,
    last_storefront_sync timestamptz,
    last_reviews_sync timestamptz,
    last_histogram_sync timestamptz,
    priority_score int default 0,
    next_sync_after timestamptz default now(),
    sync_interval_hours int default 24,
    consecutive_errors int default 0,
    last_error_source text,
    last_error_message text,
    last_error_at timestamptz,
    is_syncable boolean default true,
    refresh_tier text default 'moderate',
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);

create function ops.get_apps_for_sync(p_source text, p_limit int)
returns table (appid int, priority_score int)
language sql stable as $$
    select s.appid, coalesce(s.priority_score, 0) from ops.sync_status s
    where coalesce(s.is_syncable, true)
      and case p_source
          when 'storefront' then coalesce(s.last_storefront_sync, '-infinity') <= now() - interval '24 hours'
          else coalesce(s.next_sync_after, '-infinity') <= now()
      end
    order by coalesce(s.priority_score, 0) desc, s.appid
    limit greatest(coalesce(p_limit, 100), 0)
$$;

insert into ops.sync_status (appid, priority_score, last_storefront_sync) values (10, 50, now() - interval '2 days'), (20, 5, null);
insert into ops.sync_jobs (job_type, status, items_processed, completed_at, metadata)
values ('storefront', 'completed', 2, now(), '{"partition": 0}'), ('histogram', 'failed', 0, now(), null);
