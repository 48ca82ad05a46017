-- The orders table of pg-to-sqlite.yaml, sqlite-to-pg.yaml and
-- snapshot.yaml, with 12 orders. Plain SQL that both PostgreSQL and SQLite
-- load:
--   psql "$DATABASE_URL" -f data/orders.sql
--   sqlite3 out/orders.db < data/orders.sql
-- (in SQLite the column types are names with an affinity: bigint is an
-- integer, double precision a real, timestamptz keeps the text as given).
CREATE TABLE IF NOT EXISTS orders (
  id         bigint PRIMARY KEY,
  customer   text NOT NULL,
  region     text NOT NULL,
  amount     double precision NOT NULL,
  created_at timestamptz NOT NULL
);
INSERT INTO orders (id, customer, region, amount, created_at) VALUES
  (1,  'ada',   'eu',   12.5,   '2026-11-02T09:15:00Z'),
  (2,  'bob',   'us',   40,     '2026-11-02T09:20:30Z'),
  (3,  'chen',  'asia', 7.25,   '2026-11-02T10:01:00Z'),
  (4,  'ada',   'eu',   99.99,  '2026-11-02T11:45:10Z'),
  (5,  'dora',  'us',   3.1,    '2026-11-03T08:00:00Z'),
  (6,  'emil',  'eu',   250,    '2026-11-03T08:30:00Z'),
  (7,  'chen',  'asia', 18.75,  '2026-11-03T12:12:12Z'),
  (8,  'bob',   'us',   0.5,    '2026-11-04T16:00:00Z'),
  (9,  'fay',   'asia', 61.2,   '2026-11-04T17:05:00Z'),
  (10, 'gus',   'eu',   5,      '2026-11-05T07:59:59Z'),
  (11, 'dora',  'us',   120.45, '2026-11-05T09:00:00Z'),
  (12, 'hana',  'asia', 33.3,   '2026-11-05T22:30:00Z');
