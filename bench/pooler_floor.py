"""The least a transaction pooler costs in this Python and event loop: the throughput area's floor.

`PGPASSWORD=... python -m bench.pooler_floor HOST PORT DATABASE USER POOL MODE READY_FILE` opens
POOL connections to PostgreSQL (the emulator's own DbConnection: the same login, reads and writes)
and serves clients on 127.0.0.1, its port written to READY_FILE as {"port": N}, until SIGTERM.
MODE is transaction (the pooling measured) or session (a client keeps its connection until it
leaves: for pgbench -M prepared, whose named statements need the emulator's work to be pooled).

What it does per transaction is what any transaction pooler must do, and nothing more: a client's
bytes go to a database connection lent when its transaction starts (in line while none is idle),
the server's bytes go back, and the connection returns to the pool at a ReadyForQuery that says
idle. Nothing else is read or checked: it authenticates no one (every login is answered with the
server's parameters), parses no message, and looks for ReadyForQuery only at the end of a chunk
(where a pgbench answer ends), so it is no pooler to use. It is what the emulator would cost if its
own work (framing, routing, pinning, prepared statements, statistics) cost nothing: the same
interpreter, uvloop, sockets and database side. The bench runs it in the emulator's build (compiled
or not) beside the emulator and PgBouncer, so that how far the emulator is from PgBouncer can be
split into what this runtime costs and what the emulator's own work costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import cast

from emulator.net import LOOPBACK
from emulator.rdsproxy.dbconn import Credentials, DatabaseError, DbConnection, pool_key
from emulator.rdsproxy.main import run_loop
from emulator.rdsproxy.protocol import messages as m

# ReadyForQuery, idle: the transaction is over and the connection free.
IDLE_READY = b"Z\0\0\0\x05I"
TERMINATE = ord("X")
# SSLRequest and GSSENCRequest: refused ('N'); the client goes on in plain text.
ENCRYPTION_REQUESTS = (80877103, 80877104)


class _Pool:
    def __init__(self, connections: list[DbConnection], *, session: bool) -> None:
        self.idle = connections
        self.line: deque[_Client] = deque()
        # Session pooling: a client keeps its connection until it leaves (for named prepared
        # statements, which transaction pooling without the emulator's work cannot carry).
        self.session = session
        self._resets: set[asyncio.Task[None]] = set()

    def borrow(self, client: _Client) -> None:
        if self.idle:
            client.lent(self.idle.pop())
        else:
            self.line.append(client)

    def give_back(self, conn: DbConnection) -> None:
        if self.line:
            self.line.popleft().lent(conn)
        else:
            conn.detach()
            self.idle.append(conn)

    def client_left(self, conn: DbConnection) -> None:
        """A client left holding a connection: in session mode, its session is reset and the
        connection lent again; in transaction mode it left mid-transaction, and the connection goes."""
        if not self.session:
            conn.close()
            return
        conn.detach()
        reset = asyncio.get_running_loop().create_task(self._reset(conn))
        self._resets.add(reset)
        reset.add_done_callback(self._resets.discard)

    async def _reset(self, conn: DbConnection) -> None:
        try:
            await asyncio.wait_for(conn.run_quietly("DISCARD ALL"), 10)
        except (DatabaseError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            print(f"pooler_floor: a connection could not be reset, closed: {exc!r}", file=sys.stderr)
            conn.close()
            return
        self.give_back(conn)


class _Client(asyncio.Protocol):
    def __init__(self, pool: _Pool, login_answer: bytes) -> None:
        self.pool = pool
        self.login_answer = login_answer
        self.transport: asyncio.Transport | None = None
        self.conn: DbConnection | None = None
        self.logged_in = False
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if data[0] == TERMINATE:  # (a chunk starts with a message: pgbench's do)
            self._close()
        elif conn is not None:
            conn.send(data)
        elif not self.logged_in:
            self._login(data)
        else:
            self.pending.append(data)
            if len(self.pending) == 1:
                self.pool.borrow(self)

    def _login(self, data: bytes) -> None:
        assert self.transport is not None
        if int.from_bytes(data[4:8], "big") in ENCRYPTION_REQUESTS:
            self.transport.write(b"N")
            return
        self.logged_in = True
        self.transport.write(self.login_answer)

    def lent(self, conn: DbConnection) -> None:
        self.conn = conn
        conn.attach(self.from_server, self.lost)
        conn.send(b"".join(self.pending))
        self.pending.clear()

    def from_server(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if data.endswith(IDLE_READY) and not self.pool.session:
            conn, self.conn = self.conn, None
            assert conn is not None
            self.pool.give_back(conn)

    def lost(self, exc: BaseException) -> None:
        print(f"pooler_floor: a database connection was lost: {exc}", file=sys.stderr)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.line:
            self.pool.line.remove(self)
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.client_left(conn)


def _login_answer(params: dict[str, str]) -> bytes:
    """AuthenticationOk, the server's parameters, BackendKeyData, ReadyForQuery."""
    parts = [m.authentication(0)]
    parts += [m.parameter_status(name, value) for name, value in params.items()]
    parts += [m.backend_key_data(1, 1), m.ready_for_query(b"I")]
    return b"".join(parts)


async def serve(
    host: str, port: int, *, database: str, user: str, size: int, session: bool, ready: Path
) -> None:
    key, credentials = pool_key(database, user, False), Credentials(user, os.environ["PGPASSWORD"])
    connections = [
        await DbConnection.open(
            host, port, key, credentials, application_name="pooler_floor", init_query="", timeout=30
        )
        for _ in range(size)
    ]
    pool, answer = _Pool(connections, session=session), _login_answer(connections[0].state.params)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(pool, answer), LOOPBACK, 0)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    written = ready.with_suffix(".tmp")  # renamed when whole: the bench waits for the name
    written.write_text(json.dumps({"port": server.sockets[0].getsockname()[1]}))
    written.replace(ready)
    await stop
    server.close()
    for conn in connections:
        conn.close()


def main() -> None:
    host, port, database, user, size, mode, ready = sys.argv[1:8]
    if mode not in {"transaction", "session"}:
        sys.exit(f"pooling mode {mode!r}: transaction or session")
    work = serve(
        host,
        int(port),
        database=database,
        user=user,
        size=int(size),
        session=mode == "session",
        ready=Path(ready),
    )
    run_loop(work)  # the emulator's own choice of event loop


if __name__ == "__main__":
    main()
