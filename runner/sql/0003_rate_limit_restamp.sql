-- syncrun migration 0003: rate-limit reservations that are re-stamped (not thrown away) when used late,
-- and the token-bucket form (`rate: 0.33/s`, `burst: 3`). 0002's functions stay for older clients.
-- Every time here is the database's clock_timestamp(); see docs/rate-limits.md.

-- token-bucket form: the bucket's theoretical arrival time (GCRA): the next grant may go at
-- tat - (burst - 1) * interval, and each grant moves it to greatest(tat, grant) + interval.
alter table syncrun_rate_limits add column if not exists tat timestamptz;
-- the limit the bucket's grants were made under, and how long it binds after the latest one: a process
-- declaring another limit for the same bucket meanwhile is refused (it would stall, or overrun, both)
alter table syncrun_rate_limits add column if not exists declared text;
alter table syncrun_rate_limits add column if not exists declared_for float8;
-- token form: tat right after this grant, folding the log in order of (at, seq); a re-stamp refolds
-- from the grant it moves
alter table syncrun_rate_log add column if not exists tat_after timestamptz;

-- Reserve the earliest moment one more request of `p_bucket` may be sent. Returns {that moment, now, seq}
-- (epoch seconds of the database's clock, and the reservation's number for syncrun_rate_restamp).
-- Window form (p_interval null): at most p_requests in every window of p_window seconds, at most
-- p_burst within p_window * p_burst / p_requests. Token form (p_interval: seconds per token): GCRA
-- with tolerance p_window (= (burst - 1) * interval); p_requests, p_burst unused. Either way, none before paused_until, and grants stay in order (>= last_at).
-- A re-stamped reservation may sit later than younger ones, so "the grant N ago" is the latest of the
-- rows at or before it (a superset of the older rows holds one at least as late as the N-th latest;
-- the log keeps 64 rows beyond N for that).
-- A bucket's limit in words, as the refusal above shows it: `10 per 2.01 s, burst 1` or `token every 3.045 s, burst 3`.
create or replace function syncrun_rate_declaration(p_requests int, p_window float8, p_burst int, p_interval float8)
returns text language sql immutable as $$
    select case when p_interval is null
        then format('%s per %s s, burst %s', p_requests, round(p_window::numeric, 6), p_burst)
        else format('a token every %s s, burst %s', round(p_interval::numeric, 6), p_burst) end
$$;

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
        at := greatest(  -- greatest() ignores nulls: a missing log row (the first grants) imposes nothing
            now_, b.paused_until, b.last_at,
            (select max(l.at) + make_interval(secs => p_window) from syncrun_rate_log l
              where l.bucket = p_bucket and l.seq between k - p_requests - 64 and k - p_requests),
            (select max(l.at) + make_interval(secs => p_window * p_burst / p_requests) from syncrun_rate_log l
              where l.bucket = p_bucket and l.seq between k - p_burst - 64 and k - p_burst)
        );
    else
        at := greatest(now_, b.paused_until, b.last_at, b.tat - make_interval(secs => p_window));
        b.tat := greatest(b.tat, at) + make_interval(secs => p_interval);
    end if;
    insert into syncrun_rate_log (bucket, seq, at, tat_after) values (p_bucket, k, at, b.tat);
    delete from syncrun_rate_log where bucket = p_bucket and seq <= k - keep;
    update syncrun_rate_limits
       set seq = k, last_at = at, paused_until = b.paused_until, tat = b.tat, updated_at = now_,
           declared = b.declared, declared_for = b.declared_for
     where bucket = p_bucket;
    return array[extract(epoch from at), extract(epoch from clock_timestamp()), k]::float8[];
end
$$;

-- Reservation `p_seq` is being used `p_late` seconds after its time: move it that much later, if no
-- other reservation already made relies on it being where it was. Returns its new time (epoch seconds),
-- or null when refused (the caller then leaves it unused and reserves again, after any pause).
-- Window form: every window of p_window (and of the burst's span) that now holds the new time must
-- hold at most p_requests (p_burst) rows; only windows ending at the new time or at a younger row
-- within one window after it can have grown. Token form: the GCRA fold from the moved grant on must
-- still conform; the rows' tat_after and the bucket's tat follow it. A refusal changes nothing (the
-- function's statements run in one transaction, the caller's autocommit statement).
create or replace function syncrun_rate_restamp(
    p_bucket text, p_seq bigint, p_late float8,
    p_requests int, p_window float8, p_burst int, p_interval float8
) returns float8
language plpgsql as $$
declare
    b syncrun_rate_limits;
    old timestamptz;
    s timestamptz;
    t timestamptz;
    r record;
begin
    select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    select l.at into old from syncrun_rate_log l where l.bucket = p_bucket and l.seq = p_seq;
    if not found then
        return null;
    end if;
    s := old + make_interval(secs => greatest(p_late, 0));
    if s < b.paused_until then
        return null;  -- a Retry-After came meanwhile: a late request must not go out inside it
    end if;
    if p_interval is not null then
        -- GCRA over the log in order, the moved grant at its new time, from the tat just before it
        -- (p_window is the tolerance): refused if any grant from it on would no longer conform
        -- (checked first, written after: a refusal must leave the rows as they were)
        for step in 1..2 loop
            select l.tat_after into t from syncrun_rate_log l
             where l.bucket = p_bucket and (l.at, l.seq) < (old, p_seq) order by l.at desc, l.seq desc limit 1;
            for r in
                select l.seq, case when l.seq = p_seq then s else l.at end as at from syncrun_rate_log l
                 where l.bucket = p_bucket and (l.at, l.seq) >= (old, p_seq) order by 2, 1
            loop
                if r.at < t - make_interval(secs => p_window) - interval '1 microsecond' then
                    return null;
                end if;
                t := greatest(t, r.at) + make_interval(secs => p_interval);
                if step = 2 then
                    update syncrun_rate_log set tat_after = t where bucket = p_bucket and seq = r.seq;
                end if;
            end loop;
        end loop;
        b.tat := t;
    else
        for t in
            select s union all
            select l.at from syncrun_rate_log l
             where l.bucket = p_bucket and l.seq <> p_seq
               and l.at >= s and l.at < s + make_interval(secs => p_window)
        loop
            if (select count(*) from syncrun_rate_log l
                 where l.bucket = p_bucket and l.seq <> p_seq
                   and l.at > t - make_interval(secs => p_window) and l.at <= t) + 1 > p_requests
               or (p_burst < p_requests and (select count(*) from syncrun_rate_log l
                 where l.bucket = p_bucket and l.seq <> p_seq
                   and l.at > t - make_interval(secs => p_window * p_burst / p_requests) and l.at <= t) + 1 > p_burst)
            then
                return null;
            end if;
        end loop;
    end if;
    update syncrun_rate_log set at = s where bucket = p_bucket and seq = p_seq;
    update syncrun_rate_limits set last_at = greatest(last_at, s), tat = b.tat, updated_at = clock_timestamp()
     where bucket = p_bucket;
    return extract(epoch from s);
end
$$;

create index if not exists syncrun_rate_log_at on syncrun_rate_log (bucket, at);

-- Give back reservation `p_seq` that will never be used (its run was stopped while waiting for it), so
-- the next run does not wait for a slot nobody took: a 1-per-minute bucket would lose a minute. Only
-- the latest reservation can go: a younger one was computed from it and relies on it. Returns whether
-- it went.
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
       set seq = p_seq - 1, last_at = prev.at, tat = prev.tat_after, updated_at = clock_timestamp()
     where bucket = p_bucket;
    return true;
end
$$;
