"""The RDS Proxy emulator: a PostgreSQL wire-protocol proxy that pools, queues, authenticates and
fails like Amazon RDS Proxy.

protocol/ is its sans-I/O core (it imports nothing of asyncio or sockets). Around it: login (startup,
TLS, authentication), session (one client's multiplexed session), dbconn and pool (database
connections and the borrow queue), target (the database and its secret), listener (the endpoint),
admin, metrics and proxylog (what it shows, publishes and logs), main (the process). It imports
nothing from the rest of the kit: it runs in a process of its own.
"""
