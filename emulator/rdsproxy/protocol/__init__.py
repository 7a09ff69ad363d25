"""The sans-I/O core of the RDS Proxy emulator: bytes in, decisions out.

messages (framing and builders), routing (which server answer belongs to which client message),
pinning (which SQL pins a session, and RDS Proxy's reason). It imports no asyncio, socket, ssl or
selectors (a ruff rule in this folder's ruff.toml enforces it), so everything here is unit-tested
without a network.
"""
