-- syncrun migration 0011: a window-form reservation no longer waits for the latest grant (`last_at`)
-- when that grant was re-stamped later: it is placed by the window and burst rules alone, which now
-- read "the N-th (B-th) latest grant" exactly, by time (the (bucket, at) index of 0003), re-stamped
-- rows included. Before, every re-stamp raised the floor of every later reservation: each request on a
-- new plain-HTTP connection (re-stamped FRESH + a round trip later) pushed the whole shared schedule
-- by 60-90 ms, 0.2 s in the first second of four runners (docs/benchmarks.md, issue #11).
-- Why the floor is not needed: a grant at t with at most N - 1 grants later than t - window (any of
-- them, before or after t) completes no window of N + 1; the same for the burst rule. The token form
-- is unchanged (its GCRA folds the log in order).

create or replace function syncrun_rate_reserve(
    p_bucket text, p_requests int, p_window float8, p_burst int, p_pause float8, p_interval float8
) returns float8[]
language plpgsql as $$
declare
    b syncrun_rate_limits;
    now_ timestamptz;
    at timestamptz;
    k bigint;
    keep int := p_requests + p_burst + 64;
begin
    select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    if not found then
        insert into syncrun_rate_limits (bucket) values (p_bucket) on conflict do nothing;
        select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    end if;
    now_ := clock_timestamp();  -- after the lock: the grant is computed from when it is ours to give
    if b.declared is distinct from syncrun_rate_declaration(p_requests, p_window, p_burst, p_interval)
       and b.last_at + make_interval(secs => b.declared_for) > now_ then
        raise exception 'syncrun: rate-limit bucket % is in use with another limit (%) than this process declares (%)',
            p_bucket, b.declared, syncrun_rate_declaration(p_requests, p_window, p_burst, p_interval)
            using errcode = 'SR001';
    end if;
    b.declared := syncrun_rate_declaration(p_requests, p_window, p_burst, p_interval);
    b.declared_for := greatest(p_window, coalesce(p_interval, 0));
    if p_pause is not null then
        b.paused_until := greatest(b.paused_until, now_ + make_interval(secs => p_pause));
    end if;
    k := b.seq + 1;
    if p_interval is null then
        at := greatest(  -- greatest() ignores nulls: fewer than N (B) rows impose nothing
            now_, b.paused_until,
            (select l.at + make_interval(secs => p_window) from syncrun_rate_log l
              where l.bucket = p_bucket order by l.at desc offset p_requests - 1 limit 1),
            (select l.at + make_interval(secs => p_window * p_burst / p_requests) from syncrun_rate_log l
              where l.bucket = p_bucket order by l.at desc offset p_burst - 1 limit 1)
        );
    else
        at := greatest(now_, b.paused_until, b.last_at, b.tat - make_interval(secs => p_window));
        b.tat := greatest(b.tat, at) + make_interval(secs => p_interval);
    end if;
    insert into syncrun_rate_log (bucket, seq, at, tat_after) values (p_bucket, k, at, b.tat);
    -- a row of the last window stays, however old its number (a re-stamp may have moved it that far)
    delete from syncrun_rate_log l where l.bucket = p_bucket and l.seq <= k - keep
       and l.at < now_ - make_interval(secs => greatest(p_window, coalesce(p_interval, 0)));
    -- last_at: the latest grant time, whichever grant it is (the declared limit binds until it + window)
    update syncrun_rate_limits
       set seq = k, last_at = greatest(b.last_at, at), paused_until = b.paused_until, tat = b.tat,
           updated_at = now_, declared = b.declared, declared_for = b.declared_for
     where bucket = p_bucket;
    return array[extract(epoch from at), extract(epoch from clock_timestamp()), k]::float8[];
end
$$;

-- Give back reservation `p_seq` (unchanged but for last_at, which is now the latest time of the rows
-- left, not the previous row's: rows are no longer in time order).
create or replace function syncrun_rate_unreserve(p_bucket text, p_seq bigint) returns boolean
language plpgsql as $$
declare
    b syncrun_rate_limits;
    prev syncrun_rate_log;
begin
    select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    if not found or b.seq <> p_seq then
        return false;
    end if;
    delete from syncrun_rate_log where bucket = p_bucket and seq = p_seq;
    select * into prev from syncrun_rate_log where bucket = p_bucket and seq = p_seq - 1;
    update syncrun_rate_limits
       set seq = p_seq - 1,
           last_at = (select max(l.at) from syncrun_rate_log l where l.bucket = p_bucket),
           tat = prev.tat_after, updated_at = clock_timestamp()
     where bucket = p_bucket;
    return true;
end
$$;
