-- syncrun migration 0002: rate-limit buckets shared through PostgreSQL (`rate_limit.shared: database`).
-- Every time here is the database's clock_timestamp(), so processes on machines with skewed clocks agree.

-- one row per bucket name: its grant counter, the latest grant time and its Retry-After pause.
-- Locking this row (FOR UPDATE) serialises the grants of one bucket.
create table if not exists syncrun_rate_limits (
    bucket text primary key,
    seq bigint not null default 0,  -- grants so far; the latest is number `seq`
    last_at timestamptz,  -- when grant `seq` may be sent (may be in the future: a reservation)
    paused_until timestamptz,
    updated_at timestamptz not null default now()
);

-- the last `requests` grants of each bucket (older ones are deleted as new ones come in), so a grant
-- looks up "the grant `requests` ago" by primary key whatever the limit (10/s or 100000/day).
create table if not exists syncrun_rate_log (
    bucket text not null,
    seq bigint not null,
    at timestamptz not null,
    primary key (bucket, seq)
);

-- Reserve the earliest moment one more request of `p_bucket` may be sent. Returns {that moment, now}
-- as epoch seconds of the database's clock (the caller maps them onto its own clock). Same rules as runner/ratelimit.py's in-process Limiter: at most
-- p_requests grants in every window of p_window seconds (per + margin), at most p_burst of them within
-- p_window * p_burst / p_requests, none before paused_until. p_pause (seconds, may be null) first
-- extends the pause, so a Retry-After seen by this process also travels with its next grant.
create or replace function syncrun_rate_grant(
    p_bucket text, p_requests int, p_window float8, p_burst int, p_pause float8 default null
) returns float8[]
language plpgsql as $$
declare
    b syncrun_rate_limits;
    now_ timestamptz;
    at timestamptz;
    k bigint;
begin
    select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    if not found then
        insert into syncrun_rate_limits (bucket) values (p_bucket) on conflict do nothing;
        select * into b from syncrun_rate_limits where bucket = p_bucket for update;
    end if;
    now_ := clock_timestamp();  -- after the lock: the grant is computed from when it is ours to give
    if p_pause is not null then
        b.paused_until := greatest(b.paused_until, now_ + make_interval(secs => p_pause));
    end if;
    k := b.seq + 1;
    -- greatest() ignores nulls: a missing log row (the first grants) imposes nothing
    at := greatest(
        now_,
        b.paused_until,
        b.last_at,  -- grants stay in order
        (select l.at + make_interval(secs => p_window)
           from syncrun_rate_log l where l.bucket = p_bucket and l.seq = k - p_requests),
        (select l.at + make_interval(secs => p_window * p_burst / p_requests)
           from syncrun_rate_log l where l.bucket = p_bucket and l.seq = k - p_burst)
    );
    insert into syncrun_rate_log (bucket, seq, at) values (p_bucket, k, at);
    delete from syncrun_rate_log where bucket = p_bucket and seq <= k - p_requests;
    update syncrun_rate_limits
       set seq = k, last_at = at, paused_until = b.paused_until, updated_at = now_
     where bucket = p_bucket;
    return array[extract(epoch from at), extract(epoch from clock_timestamp())]::float8[];
end
$$;

-- A Retry-After: grant nothing in `p_bucket` for `p_seconds` from now (never shortens a longer pause).
create or replace function syncrun_rate_pause(p_bucket text, p_seconds float8) returns void
language sql as $$
    insert into syncrun_rate_limits as r (bucket, paused_until)
    values (p_bucket, clock_timestamp() + make_interval(secs => p_seconds))
    on conflict (bucket) do update
        set paused_until = greatest(r.paused_until, excluded.paused_until), updated_at = clock_timestamp();
$$;
