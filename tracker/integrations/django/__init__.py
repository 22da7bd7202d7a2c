"""Django: add ``"tracker.integrations.django"`` to ``INSTALLED_APPS``.

At startup (``AppConfig.ready()``) the app configures the process-wide tracker with the
``PX_TRACKER`` settings dict, whose keys are the options of ``Tracker`` (options left
out come from the ``PX_*`` environment variables, as always); views then call
``tracker.track(...)``. Without a ``PX_TRACKER`` setting nothing is configured at startup
and the tracker is built from the environment on first use. A bad option stops startup
with ``ImproperlyConfigured`` naming it.

Nothing is needed for shutdown: the tracker's own exit flush (``flush_at_exit``, on by
default) delivers what is pending within ``exit_timeout`` when the process exits,
whichever server runs it.
"""
