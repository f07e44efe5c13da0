-- A Supabase-shaped seed database (steam-workers.md §3.1-3.3), reduced to what syncrun touches:
-- public.sync_jobs without heartbeat_at/requests_made/metadata and without a status CHECK;
-- sync_status with an FK to apps and last_error_source as the sync_source enum;
-- get_apps_for_sync(p_source sync_source, p_limit int).
create type sync_source as enum (
    'steamspy', 'storefront', 'reviews', 'histogram', 'scraper', 'pics', 'news', 'hero_asset', 'change_hints'
);

create table apps (
    appid int primary key,
    name text not null,
    type text default 'game',
    is_free boolean default false,
    price_cents int,
    release_date date,
    release_date_raw text,
    updated_at timestamptz default now()
);

create table sync_jobs (
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
create index idx_sync_jobs_type_started on sync_jobs (job_type, started_at desc);
create index idx_sync_jobs_running on sync_jobs (status) where status = 'running';

create table sync_status (
    appid int primary key references apps (appid) on delete cascade,
    last_steamspy_sync timestamptz,
    last_storefront_sync timestamptz,
    last_reviews_sync timestamptz,
    last_histogram_sync timestamptz,
    priority_score int default 0,
    priority_calculated_at timestamptz,
    next_sync_after timestamptz default now(),
    sync_interval_hours int default 24,
    consecutive_errors int default 0,
    last_error_source sync_source,
    last_error_message text,
    last_error_at timestamptz,
    is_syncable boolean default true,
    storefront_accessible boolean default true
);

create function get_apps_for_sync(p_source sync_source, p_limit int default 100)
returns table (appid int, priority_score int)
language plpgsql stable as $$
begin
    return query
    select s.appid, s.priority_score from sync_status s
    where s.is_syncable = true
      and (p_source <> 'storefront' or s.storefront_accessible is not false)
    order by s.priority_score desc
    limit p_limit;
end
$$;

insert into apps (appid, name) values (10, 'Half-Life'), (20, 'Team Fortress Classic'), (30, 'Day of Defeat');
insert into sync_status (appid, priority_score, last_storefront_sync, last_error_source, last_error_message)
values (10, 50, now() - interval '2 days', 'storefront', 'HTTP 500'), (20, 5, null, null, null), (30, 0, now(), null, null);
insert into sync_jobs (job_type, status, items_processed, completed_at)
values ('storefront', 'completed', 3, now()), ('reviews', 'running', 0, null);
