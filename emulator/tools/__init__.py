"""Tools built on the twin, for people: the connection-exhaustion demonstration (demo, burst,
activity), the pinning report of a run (report) and the static pinning check of SQL in code (sqlcheck).

They may import every other subpackage; nothing imports them but the command line and the
twin's API (its bursts and connection counts are the demo's).
"""
