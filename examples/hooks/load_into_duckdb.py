"""A command hook: loads each committed window into a DuckDB table of its type.

At least once means maybe twice: an event already loaded is skipped by its id, and
a new revision of a window replaces the window's rows.

    command = ["python3", "load_into_duckdb.py", "/srv/warehouse.duckdb"]
"""

import json
import sys

import duckdb

event = json.load(sys.stdin)
db = duckdb.connect(sys.argv[1])
db.execute("CREATE TABLE IF NOT EXISTS loaded (id TEXT PRIMARY KEY)")
if not db.execute("SELECT 1 FROM loaded WHERE id = ?", [event["id"]]).fetchall():
    table, source = event["type"], f"read_json('{event['url']}')"
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT *, '' AS _window FROM {source} LIMIT 0")
    db.execute("BEGIN")
    db.execute(f"DELETE FROM {table} WHERE _window = ?", [event["fromDate"]])
    db.execute(f"INSERT INTO {table} BY NAME SELECT *, ? AS _window FROM {source}", [event["fromDate"]])
    db.execute("INSERT INTO loaded VALUES (?)", [event["id"]])
    db.execute("COMMIT")
