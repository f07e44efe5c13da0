-- Applied by runner/migrations.py only for a source selecting with `function: get_apps_for_sync`
-- (which also adds the columns it reads: priority_score, is_syncable, sync_interval_hours).
-- Placeholders in braces are filled with quoted identifiers/literals; nothing else is substituted.

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
