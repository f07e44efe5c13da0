-- syncrun migration 0006: incremental syncs of list sources (`incremental:`, runner/watermarks.py).
-- value: the watermark requests read as ${incremental.since} (minus the lookback); it advances only
-- when a listing completes. pending: the largest cursor value the unfinished listing has seen, so a
-- listing resumed from its checkpoint advances past what its earlier runs read. Both are JSON that
-- keeps the type: {"type": "timestamp" | "integer", "value": ...}. `syncrun run --restart` deletes the row.
create table if not exists syncrun_watermarks (
    source text primary key,
    value jsonb,
    pending jsonb,
    job_id uuid,
    advanced_at timestamptz,
    updated_at timestamptz not null default now()
);
