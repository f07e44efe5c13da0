-- The seed-compatible status table (one row per entity), re-applied on every migrate (idempotent).
-- Each source adds its own `last_<source>_sync` column (runner/migrations.py). Placeholders in
-- braces (status table, key, key type, function) are filled by runner/migrations.py with quoted
-- identifiers/literals; nothing else is substituted.

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

-- The seed's selection function, generic over sources: due = syncable and never synced for
-- p_source, or its last_<p_source>_sync stamp is older than sync_interval_hours (24 by default).
-- Created only when no get_apps_for_sync exists in that schema: an existing one (Supabase takes a
-- sync_source enum, Tiger joins legacy.apps) is the user's and is never replaced or overloaded
-- (an overload would make PostgREST's RPC call ambiguous).
do $do$
begin
    if not exists (
        select from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where p.proname = 'get_apps_for_sync' and n.nspname = {function_schema}
    ) then
        execute $ddl$
            create function {function}(p_source text, p_limit int default 100)
            returns table ({key} {key_type}, priority_score int)
            language plpgsql stable as $fn$
            begin
                return query execute format(
                    'select s.%1$I::{key_type}, coalesce(s.priority_score, 0)::int from %2$s s
                      where coalesce(s.is_syncable, true)
                        and (s.%3$I is null
                             or s.%3$I < now() - make_interval(hours => coalesce(s.sync_interval_hours, 24)))
                      order by s.%3$I is not null, coalesce(s.priority_score, 0) desc, s.%1$I
                      limit $1',
                    {key_literal}, {status_literal}::regclass, 'last_' || p_source || '_sync')
                using greatest(coalesce(p_limit, 100), 0);
            end
            $fn$
        $ddl$;
    end if;
end
$do$;
