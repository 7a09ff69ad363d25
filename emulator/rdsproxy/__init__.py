"""The RDS Proxy emulator: a PostgreSQL wire-protocol proxy that pools, queues, authenticates and
fails like Amazon RDS Proxy. A sans-I/O protocol core (messages, routing, pool policy) with asyncio
around it (session, backend, server)."""
