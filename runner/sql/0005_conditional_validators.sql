-- syncrun migration 0005 (conditional requests): the validators (ETag, Last-Modified) a per-entity
-- source's last 2xx reply carried, sent back as If-None-Match / If-Modified-Since; a 304 is the
-- entity's `unchanged` outcome. Written in the same transaction as the entity's rows and status
-- stamp (runner/conditional.py). Values are at most 1,024 characters of header text.
create table if not exists syncrun_validators (
    source text not null,
    entity_key text not null,
    etag text check (length(etag) <= 1024),
    last_modified text check (length(last_modified) <= 1024),
    updated_at timestamptz not null default now(),
    primary key (source, entity_key)
);
