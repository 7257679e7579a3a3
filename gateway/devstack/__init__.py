"""Local stack: embedded PostgreSQL and Redis servers and a small process supervisor.

Used by ``make run`` and ``make test`` when ``DATABASE_URL`` / ``REDIS_URL`` are unset,
and by tests that need a server of their own to stop.
"""
