-- Target tables of sources/example.yaml (the demo). Apply with `syncrun migrate --tables example`
-- or copy into your own migrations.
create table if not exists apps (
    appid int primary key,
    name text,
    type text,
    is_free boolean,
    price_cents int,
    release_date date,
    release_date_raw text,
    updated_at timestamptz default now()
);
create table if not exists app_tags (
    appid int not null,
    tag text not null,
    primary key (appid, tag)
);
create table if not exists daily_metrics (
    appid int not null,
    metric_date date not null,
    ccu_peak int,
    primary key (appid, metric_date)
);
