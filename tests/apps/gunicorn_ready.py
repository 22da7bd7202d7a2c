"""gunicorn settings for tests/_support.py's run_gunicorn: each worker says when it is ready.

A worker installs its signal handlers only once it runs (a gevent worker after patching
the standard library); a SIGTERM that arrives before goes to the handler it inherited
from the master and is lost, and the master waits its graceful timeout for that worker,
whatever the app does. The tests wait for every worker's line before they stop the server.
"""

from typing import Any


def post_worker_init(worker: Any) -> None:
    worker.log.info("Worker ready (pid: %s)", worker.pid)
