-- Starting state for the Steam replays (sources/replays/<source>/cassette.yaml). Each golden
-- file (tests/data/golden/<source>.json) is the state after replaying ONE source against a fresh
-- copy of this seed, so every golden starts from exactly these rows.
--
-- Apply after syncrun's migration and runner/sql/tables/steam.sql, into an empty schema:
--     psql -v ON_ERROR_STOP=1 -f runner/sql/tables/steam.sql -f sources/replays/seed.sql
-- Times are relative to now(); "today" is the UTC date, like syncrun's run.today. Seed and replay
-- must run on the same UTC day (the reviews and ccu goldens depend on today's daily_metrics row).
--
-- 19 apps in sync_status (applist adds 20, 30, 40; storefront adds stubs 3165620, 4707330). Per source, the apps due (null or old stamp) are exactly the ones the replay holds;
-- every other stamp is one hour old ("fresh": not due for any source's interval).
--
--   appid     prio  storefront price reviews     histogram ccu  steamspy_app  what it exercises
--   10          10  -          -     -           -         -    -             applist: a stub stays a stub
--   440        120  -          -     -           -         due  -             ccu: zero players
--   570        200  due        due   due (same day) due    due  -             free app; today's row exists
--   730        190  -          -     due (never) due       due  -             first reviews sync; 503 retry
--   1086940    150  due        due   due (25 h)  due       due  -             the full storefront payload
--   2222220     60  due        due   -           -         -    -             price 999999 (out of bounds)
--   2378500     45  due        -     -           due       -    -             DLC with fullgame; 502 retry
--   3000000      5  due        -     due         -         -    -             success:false / success:2
--   4615010     30  due        due   -           -         -    -             coming soon, demo; missing in price
--   99999990    40  -          due   -           -         -    -             price success:false
--   1500010     25  due        -     -           -         -    -             "Q2 2021"
--   1500020     24  due        -     -           -         -    -             "Summer 2025", type episode
--   1500030     23  due        -     -           -         -    -             "Feb 30, 2025", type beta
--   1500040     22  due        -     -           -         -    -             "21 Dec, 2012"; 429 then 200
--   1500050     21  due        -     -           -         -    candidate     "Dec 21, 2012"; SteamSpy found
--   3527290     15  -          -     -           -         -    candidate     SteamSpy "not found"
--   1500060      3  -          -     -           -         due  -             ccu result 42 (HTTP 404)
--   1500070      2  -          -     -           -         due  -             ccu 502, no retry
--   1500080      1  -          -     -           -         due  -             ccu player_count -5
--   (20, 30, 40 are not seeded: applist creates them)

-- --- sync_status ----------------------------------------------------------------------------------
insert into sync_status (appid, priority_score, is_syncable, sync_interval_hours,
                         last_storefront_sync, last_price_sync, last_reviews_sync, last_histogram_sync,
                         last_ccu_sync, last_steamspy_sync, steamspy_available, last_known_total_reviews)
select v.appid, v.prio, true, 24,
       case when v.sf then null else now() - interval '1 hour' end,
       case when v.pr then null else now() - interval '1 hour' end,
       case when v.rv then null else now() - interval '1 hour' end,
       case when v.hg then null else now() - interval '1 hour' end,
       case when v.cc then null else now() - interval '1 hour' end,
       case when v.spy then now() - interval '1 day' end,
       v.spy_available,
       v.known_total
from (values
    --  appid    prio  sf     pr     rv     hg     cc     spy    spy_available  known_total
    (10,         10,  false, false, false, false, false, true,  true,          null::int),
    (440,       120,  false, false, false, false, true,  true,  true,          900000),
    (570,       200,  true,  true,  false, true,  true,  true,  true,          null),
    (730,       190,  false, false, true,  true,  true,  true,  true,          null),
    (1086940,   150,  true,  true,  false, true,  true,  true,  true,          null),
    (2222220,    60,  true,  true,  false, false, false, false, null,          15),
    (2378500,    45,  true,  false, false, true,  false, true,  true,          null),
    (3000000,     5,  true,  false, true,  false, false, false, null,          null),
    (4615010,    30,  true,  true,  false, false, false, false, null,          null),
    (99999990,   40,  false, true,  false, false, false, false, null,          null),
    (1500010,    25,  true,  false, false, false, false, false, null,          null),
    (1500020,    24,  true,  false, false, false, false, false, null,          null),
    (1500030,    23,  true,  false, false, false, false, false, null,          null),
    (1500040,    22,  true,  false, false, false, false, false, null,          null),
    (1500050,    21,  true,  false, false, false, false, false, false,         5000),
    (3527290,    15,  false, false, false, false, false, false, false,         1200),
    (1500060,     3,  false, false, false, false, true,  false, null,          null),
    (1500070,     2,  false, false, false, false, true,  false, null,          null),
    (1500080,     1,  false, false, false, false, true,  false, null,          null)
) as v(appid, prio, sf, pr, rv, hg, cc, spy, spy_available, known_total);

-- reviews, 1086940: last synced 25 h ago (yesterday's baseline rule: measure from that sync).
update sync_status
   set last_reviews_sync = now() - interval '25 hours',
       reviews_interval_hours = 24,
       last_known_total_reviews = 1000,
       last_known_positive_reviews = 900,
       reviews_baseline_date = (now() at time zone 'utc')::date - 1,
       reviews_baseline_total = 950,
       reviews_baseline_positive = 860,
       reviews_baseline_at = now() - interval '49 hours'
 where appid = 1086940;

-- reviews, 570: a 4-hour app synced 5 h ago, on what the seed declares is the same UTC day
-- (reviews_baseline_date = today). Today's baseline is the sync 29 h ago (2,500,000 / 2,100,000);
-- the earlier same-day sync saw 2,550,000 / 2,140,000.
update sync_status
   set last_reviews_sync = now() - interval '5 hours',
       reviews_interval_hours = 4,
       last_known_total_reviews = 2550000,
       last_known_positive_reviews = 2140000,
       reviews_baseline_date = (now() at time zone 'utc')::date,
       reviews_baseline_total = 2500000,
       reviews_baseline_positive = 2100000,
       reviews_baseline_at = now() - interval '29 hours',
       last_activity_at = now() - interval '5 hours'
 where appid = 570;

-- --- apps -----------------------------------------------------------------------------------------
insert into apps (appid, name, type, is_free, is_delisted, release_date, release_date_raw, is_released,
                  current_price_cents, current_discount_percent, parent_appid, catalog_seed_state)
values
    (10,       'Steam app 10 (pending metadata)', 'game', null,  false, null, null, null, null, null, null, 'stub'),
    (440,      'Team Fortress 2',                 'game', true,  false, '2007-10-10', 'Oct 10, 2007', true, null, 0, null, 'hydrated'),
    (570,      'Dota 2',                          'game', true,  false, '2013-07-09', 'Jul 9, 2013', true, null, 0, null, 'hydrated'),
    (730,      'Counter-Strike 2',                'game', true,  false, '2012-08-21', 'Aug 21, 2012', true, null, 0, null, 'hydrated'),
    (1086940,  'Baldurs Gate 3',                  'game', false, false, '2023-08-03', 'Aug 3, 2023', true, 5999, 0, null, 'hydrated'),
    (2222220,  'Broken Price Game',               'game', false, false, null, null, null, 1999, 10, null, 'hydrated'),
    (2378500,  'Steam app 2378500 (pending metadata)', 'dlc', null, false, null, null, null, null, null, null, 'stub'),
    (4615010,  'Kibble Cats',                     'game', false, false, null, 'Coming soon', false, null, 0, null, 'hydrated'),
    (1500010,  'Quarterly Game',                  'game', false, false, null, null, null, null, null, null, 'hydrated'),
    (1500020,  'Summer Game',                     'game', false, false, null, null, null, null, null, null, 'hydrated'),
    (1500030,  'Leap Game',                       'game', false, false, null, null, null, null, null, null, 'hydrated'),
    (1500040,  'Day First Game',                  'game', false, false, null, null, null, null, null, null, 'hydrated'),
    (1500050,  'Old Classic',                     'game', false, false, null, null, null, 799, 0, null, 'hydrated');

-- --- developers / publishers and the links storefront will replace --------------------------------
insert into developers (name, normalized_name) values ('Larian Studios', 'larian studios'), ('Old Dev', 'old dev');
insert into publishers (name, normalized_name) values ('Larian Studios', 'larian studios');
insert into app_developers (appid, developer_id)
select 1086940, id from developers where normalized_name in ('larian studios', 'old dev');   -- 'old dev' is stale
insert into app_publishers (appid, publisher_id)
select 1086940, id from publishers where normalized_name = 'larian studios';
insert into app_dlc (parent_appid, dlc_appid, source) values
    (1086940, 9999990, 'storefront'),   -- stale: BG3's store page no longer lists it
    (1086940, 1234560, 'pics');         -- another source's link: storefront leaves it alone

-- --- previous facts -------------------------------------------------------------------------------
-- Yesterday's review totals (what the reviews worker read as "previous"; syncrun reads the same
-- numbers from sync_status.last_known_*), and today's row for 570: a Steam API CCU sample of
-- 700,000 and the reviews sync of 5 h ago.
insert into daily_metrics (appid, metric_date, total_reviews, positive_reviews, negative_reviews, review_score, review_score_desc)
values
    (570,     (now() at time zone 'utc')::date - 1, 2500000, 2100000, 400000, 8, 'Very Positive'),
    (1086940, (now() at time zone 'utc')::date - 1, 1000,    900,     100,    8, 'Very Positive');
insert into daily_metrics (appid, metric_date, ccu_peak, ccu_source, total_reviews, positive_reviews, negative_reviews,
                           review_score, review_score_desc)
values (570, (now() at time zone 'utc')::date, 700000, 'steam_api', 2550000, 2140000, 410000, 8, 'Very Positive');

-- The row the earlier same-day reviews sync of 570 wrote (its increment over the 29-h-old baseline).
insert into review_deltas (appid, delta_date, reviews_added, positive_added, negative_added, hours_since_last_sync,
                           total_reviews, positive_reviews, review_score, review_score_desc, is_interpolated)
values (570, (now() at time zone 'utc')::date, 50000, 40000, 10000, 24, 2550000, 2140000, 8, 'Very Positive', false);
