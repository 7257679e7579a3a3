"""The burst queue: requests accepted as jobs (202) and run by Celery workers through the
same policy engine, in priority and fair order, with retries and a per-provider breaker."""
