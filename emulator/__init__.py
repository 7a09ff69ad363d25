"""The local twin of AWS Lambda + RDS Proxy + PostgreSQL.

Where things live (each package's docstring says more, and what it may import):

    rdsproxy/        the RDS Proxy emulator, a process of its own (`python -m emulator proxy`)
      protocol/        sans-I/O core: framing, response routing, pinning rules, statements, parameters
      login, session   a client's way in; its multiplexed session after login
      pool, dbconn     the borrow queue; one database connection
      listener, target the endpoint that accepts clients; the database behind it
      admin, metrics,  the HTTP endpoint (/stats ...); CloudWatch metrics and logs;
      proxylog, texts  RDS Proxy's log lines and error texts, in its own words
    awslambda/       Lambda: execution environments as worker processes, their logs, Lambda's API, the zip
    stack/           the local stack: PostgreSQL (and your schema), moto, PgBouncer, the emulator
    terraform/       terraform runs against moto, and what an apply created (read from state and API)
    stage/           the real-AWS stage: deploy, run tests/aws on AWS and on the twin, compare
    tools/           for people: the exhaustion demo, the pinning report, check-sql
    twin/            LocalTwin: a stack, your functions and Lambda's API as one object (the Python API)
    pytest_plugin/   the pytest plugin (entry point pytest11): a twin fixture, pin and cap verdicts
    cli.py           `python -m emulator ...`: argument parsing, one function per command
    errors, net, paths, wait   shared: the kit's errors, loopback ports, where the kit's
                               files are (a checkout, or the wheel's example/), readiness checks
"""

__version__ = "0.1.0"
