"""Tollgate: the Django project package and the ``/v1`` proxy."""

from gateway.celery import app as celery_app

__version__ = "0.1.0"
__all__ = ["__version__", "celery_app"]
