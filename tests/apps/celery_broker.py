"""The Celery app of tests/apps/celery_tasks.py without its tasks or its tracker: the test
process sends tasks through it. The broker is Celery's filesystem transport in one folder
(no server); there is no result backend."""

from __future__ import annotations

from pathlib import Path

from celery import Celery


def make_app(folder: Path) -> Celery:
    for name in ("queue", "control", "processed"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    app = Celery("celery_tasks", broker="filesystem://", set_as_current=False)
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app
