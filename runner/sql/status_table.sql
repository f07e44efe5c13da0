-- The seed-compatible status table (one row per entity), re-applied on every migrate (idempotent).
-- Only the key here: runner/migrations.py adds what each source's settings use (its
-- `last_<source>_sync` stamp, the default selection's priority/syncable/interval columns, the
-- error columns unless `error_columns: false`). Placeholders in braces (status table, key, key
-- type) are filled by runner/migrations.py with quoted identifiers; nothing else is substituted.

create table if not exists {status_table} (
    {key} {key_type} primary key
);
