-- Target tables of sources/example.yaml (`syncrun demo --example` applies them); named apart from the
-- Steam tables. Apply with `syncrun migrate sources/example.yaml --tables example`, `psql -f`, or copy them.
create table if not exists games (
    appid int primary key,
    name text,
    type text,
    is_free boolean,
    price_cents int,
    release_date date,
    release_date_raw text,
    updated_at timestamptz default now()
);
create table if not exists game_tags (
    appid int not null,
    tag text not null,
    primary key (appid, tag)
);
create table if not exists game_metrics (
    appid int not null,
    metric_date date not null,
    ccu_peak int,
    primary key (appid, metric_date)
);
