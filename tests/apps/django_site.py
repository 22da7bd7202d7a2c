"""A one-view Django site for tests/test_django.py, run as a script in a fresh interpreter
(Django's settings can be configured once per process).

``python django_site.py SETTINGS_JSON [USER ...]``: the JSON object is the ``PX_TRACKER``
setting (``null``: no such setting); with the app "tracker.integrations.django" installed,
Django's test Client requests ``/track/?user=USER`` once per USER, and the view tracks
one event with ``tracker.track``. Prints one JSON line per request (the event id the view
got) and one with the process-wide tracker's config and pending count, waits for a line
on stdin, then exits *without* flushing: the tracker's exit flush is what delivers. A
startup error is printed as a JSON line too.
"""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import path

import tracker


def track_view(request: HttpRequest) -> JsonResponse:
    event_id = tracker.track(request.GET["user"], "django view", attributes={"path": request.path})
    return JsonResponse({"event_id": event_id})


urlpatterns = [path("track/", track_view)]


def main() -> None:
    options = json.loads(sys.argv[1])
    extra = {} if options is None else {"PX_TRACKER": options}
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["tracker.integrations.django"],
        **extra,
    )
    try:
        django.setup()
    except Exception as exc:
        print(json.dumps({"kind": "error", "type": type(exc).__name__, "message": str(exc)}))
        return
    client = Client()
    for user in sys.argv[2:]:
        answer = client.get("/track/", {"user": user})
        print(json.dumps({"kind": "request", "status": answer.status_code, **answer.json()}))
    current = tracker.default_tracker()
    config = current.config
    print(
        json.dumps(
            {
                "kind": "config",
                "base_url": config.base_url,
                "product_key": config.product_key,
                "allow_insecure_http": config.allow_insecure_http,
                "workers": config.workers,
                "pending": current.stats().pending,
            }
        ),
        flush=True,
    )
    sys.stdin.readline()  # the test lets PX answer, then lets this process exit


if __name__ == "__main__":
    main()
