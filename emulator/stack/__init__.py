"""The local stack: the processes the twin runs on 127.0.0.1 and how to start, wait for and stop them.

embedded (EmbeddedStack, StackConfig: plain processes), compose (the same in Docker Compose), postgres,
pgbouncer, moto (the AWS API emulator: moto_server is its process, moto_process the stack's side of
it) and its quirks, rdsproxy (the RDS Proxy emulator's process handle), proxies (what sits in front
of PostgreSQL), schema (your .sql files), process (servers that stop with the kit's process, even on
SIGKILL), leftovers (the directories of killed stacks, swept by the next), tls, envfile.

It starts the RDS Proxy emulator as a process (`python -m emulator proxy`) and imports only its
configuration from emulator.rdsproxy, never its internals.
"""
