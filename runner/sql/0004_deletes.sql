-- syncrun migration 0004: `outcome: delete` (an entity the API says is gone, e.g. HTTP 410).
-- deleted_at: when this source last found the entity gone. Selections skip such entities (`--ids`
-- still takes them); a later success or skip clears it. See runner/deletes.py.
alter table syncrun_state add column if not exists deleted_at timestamptz;
