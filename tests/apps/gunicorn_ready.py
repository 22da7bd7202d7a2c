"""gunicorn settings for tests/test_green.py: each worker says when it is ready.

A gevent worker patches the standard library before it installs its signal handlers; a
SIGTERM that arrives meanwhile goes to the handler it inherited from the master and is
lost, and the master waits its graceful timeout for that worker, whatever the app does.
The test waits for every worker's line before it stops the server.
"""

from typing import Any


def post_worker_init(worker: Any) -> None:
    worker.log.info("Worker ready (pid: %s)", worker.pid)
