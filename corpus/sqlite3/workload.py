"""Writes the sqlite3 corpus workload: `workload.py STEPS > workload.sql`.

One progress line per step from the sqlite3 shell, each step a few statements on an
in-memory database: inserts from a recursive CTE, an index kept up to date, a sort, a
group-by, a window function, a join, string and floating-point functions, deletes.
The shell flushes its output before reading each input line."""

import sys

STEP = """\
INSERT INTO t(k, g, v)
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2500)
  SELECT (x * 2654435761 + {n} * 40503) % 1000003, (x * {n}) % 97,
         printf('%08x-%d', (x * 40503 + {n}) % 65536, x) FROM c;
INSERT OR REPLACE INTO g(g, total, best)
  SELECT g, sum(k), max(v) FROM t GROUP BY g;
SELECT 'step {n} rows=' || count(*) || ' sum=' || (sum(k) % 1000000007)
    || ' med=' || (SELECT v FROM t ORDER BY v LIMIT 1 OFFSET (SELECT count(*) / 2 FROM t))
    || ' rank=' || (SELECT sum(r) % 100003 FROM (
         SELECT rank() OVER (PARTITION BY g ORDER BY k) AS r FROM t WHERE k % 11 = {n} % 11))
    || ' join=' || (SELECT count(*) FROM t JOIN g USING (g) WHERE t.v < g.best AND t.k % 13 = 0)
    || ' avg=' || printf('%.6f', avg(sqrt(k) / (g + 1)))
    || ' like=' || (SELECT count(*) FROM t WHERE v LIKE '%a%-1%')
  FROM t;
DELETE FROM t WHERE k % 7 = {n} % 7;
"""

steps = int(sys.argv[1])
out = ["CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, g INTEGER, v TEXT);",
       "CREATE INDEX t_k ON t(k);", "CREATE INDEX t_v ON t(v);",
       "CREATE TABLE g(g INTEGER PRIMARY KEY, total INTEGER, best TEXT);"]
out += [STEP.format(n=n) for n in range(1, steps + 1)]
out.append(f"SELECT 'done steps={steps} rows=' || count(*) "
           "|| ' sum=' || (sum(k) % 1000000007) FROM t;")
sys.stdout.write("\n".join(out) + "\n")
