-- syncrun migration 0008 (conditional requests): each validator remembers what the source turned
-- its reply into (a digest of the request, records, writes, status and outcome rules: runner/
-- conditional.py `fingerprint`). A validator kept under another fingerprint is not sent, so a
-- changed mapping re-fetches every entity once. Validators kept before this migration have none:
-- the next run after it is unconditional once.
alter table syncrun_validators add column if not exists fingerprint text;
