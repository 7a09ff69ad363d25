"""Lambda as the twin runs it: functions whose execution environments are worker processes, frozen
between invocations (function, worker, context), their logs as Lambda writes them (logs), Lambda's
API for those functions (invoke_api) and the deployment zip (package).

It imports only the kit's shared modules (errors, net, paths) and the applied function's description
from terraform.applied; never the stack or the proxy.
"""
