"""Tollgate settings: every value comes from the environment (see ``.env.example``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from gateway.env import Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
TOLLGATE_HOME = Path(env.str("TOLLGATE_HOME", str(BASE_DIR / ".tollgate")))

SECRET_KEY = env.str("SECRET_KEY")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")

DEBUG = env.bool("TOLLGATE_DEBUG", False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])
# The public URL of the admin, used in printed instructions and alert links.
TOLLGATE_PUBLIC_URL = env.url(
    "TOLLGATE_PUBLIC_URL", schemes={"http", "https"}, default="http://127.0.0.1:8000"
).rstrip("/")

# Secrets at rest (provider keys, SMTP password, webhook URLs) are encrypted with these
# Fernet keys; the first encrypts, all decrypt, so a key can be rotated in.
TOLLGATE_ENCRYPTION_KEYS = env.list("TOLLGATE_ENCRYPTION_KEY", [])
if not TOLLGATE_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "TOLLGATE_ENCRYPTION_KEY is required but not set; generate one with: "
        'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
    )
for _key in TOLLGATE_ENCRYPTION_KEYS:
    try:
        Fernet(_key.encode())
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "TOLLGATE_ENCRYPTION_KEY must be comma-separated Fernet keys "
            "(32 url-safe base64-encoded bytes)"
        ) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "gateway",
    "policies",
    "alerts",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.context.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway.urls"
ASGI_APPLICATION = "gateway.asgi.application"
WSGI_APPLICATION = "gateway.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env.url("DATABASE_URL", schemes={"postgres", "postgresql", "pgsql"})
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env.int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"].setdefault(
    "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1)
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.url("REDIS_URL", schemes={"redis", "rediss", "unix"})
# REDIS_URL names one node of a Redis Cluster (limits, usage and events then use cluster
# clients; Celery needs its own broker, CELERY_BROKER_URL).
REDIS_CLUSTER = env.bool("REDIS_CLUSTER", False)
# Every Redis key Tollgate writes starts with this, so one Redis can serve several installs.
TOLLGATE_REDIS_PREFIX = env.str("TOLLGATE_REDIS_PREFIX", "tg")
# Short timeouts: a slow Redis must never hang a request.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", 0.5, minimum=0.01)
REDIS_CONNECT_TIMEOUT = env.float("REDIS_CONNECT_TIMEOUT", 0.5, minimum=0.01)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{TOLLGATE_REDIS_PREFIX}:cache",
        "OPTIONS": {
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT,
        },
    }
}

if REDIS_CLUSTER and not env.optional_str("CELERY_BROKER_URL"):
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL is required when REDIS_CLUSTER is on (Celery cannot use a cluster)"
    )
CELERY_BROKER_URL = env.url(
    "CELERY_BROKER_URL",
    schemes={"redis", "rediss", "amqp", "amqps", "pyamqp"},
    default=REDIS_URL,
)
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# A task is acknowledged only after it ran, and re-queued if its worker dies mid-task.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", 240, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Unacknowledged tasks on the Redis broker come back after this long.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60),
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(TOLLGATE_HOME / "celerybeat-schedule")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("TOLLGATE_STATIC_ROOT", str(TOLLGATE_HOME / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

SESSION_COOKIE_SECURE = env.bool("TOLLGATE_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an unauthenticated request gets 401 with WWW-Authenticate.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["policies.permissions.IsTollgateAdmin"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate management API",
    "DESCRIPTION": "Organizations, features, API keys, providers and models of a Tollgate gateway.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["policies.permissions.IsTollgateAdmin"],
    "COMPONENT_SPLIT_REQUEST": True,
}

# Each dependency check of /health gets this long before it counts as down.
TOLLGATE_HEALTH_TIMEOUT_SECONDS = env.float("TOLLGATE_HEALTH_TIMEOUT_SECONDS", 3.0, minimum=0.1)
# A worker whose last heartbeat is older than this counts as gone.
TOLLGATE_WORKER_HEARTBEAT_SECONDS = 5
TOLLGATE_WORKER_STALE_SECONDS = 30

# The upstream client: connect and read timeouts (seconds) and the connection pool size.
TOLLGATE_UPSTREAM_CONNECT_TIMEOUT = env.float(
    "TOLLGATE_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.1
)
TOLLGATE_UPSTREAM_READ_TIMEOUT = env.float("TOLLGATE_UPSTREAM_READ_TIMEOUT", 300.0, minimum=0.1)
TOLLGATE_UPSTREAM_MAX_CONNECTIONS = env.int("TOLLGATE_UPSTREAM_MAX_CONNECTIONS", 2000, minimum=1)

# Limits: reservations and concurrency leases of a request that died expire after this.
TOLLGATE_LIMIT_LEASE_SECONDS = env.float("TOLLGATE_LIMIT_LEASE_SECONDS", 600.0, minimum=1.0)
# After this many Redis failures in a row the limiter stops trying for a while and applies
# each limit's failure mode at once (fail_open admits, fail_closed answers 503).
TOLLGATE_LIMITER_BREAKER_FAILURES = env.int("TOLLGATE_LIMITER_BREAKER_FAILURES", 3, minimum=1)
TOLLGATE_LIMITER_BREAKER_SECONDS = env.float("TOLLGATE_LIMITER_BREAKER_SECONDS", 2.0, minimum=0.1)

# A model without a price is never free: either reject requests to it ("reject") or charge
# these conservative defaults, USD per million tokens ("charge_default").
TOLLGATE_UNKNOWN_PRICE = env.str("TOLLGATE_UNKNOWN_PRICE", "charge_default")
if TOLLGATE_UNKNOWN_PRICE not in {"reject", "charge_default"}:
    raise ImproperlyConfigured("TOLLGATE_UNKNOWN_PRICE must be reject or charge_default")
TOLLGATE_DEFAULT_INPUT_PRICE = Decimal(str(env.float("TOLLGATE_DEFAULT_INPUT_PRICE", 15.0)))
TOLLGATE_DEFAULT_OUTPUT_PRICE = Decimal(str(env.float("TOLLGATE_DEFAULT_OUTPUT_PRICE", 75.0)))

# An alert delivery left "sending" this long belonged to a worker that died; it is retried.
TOLLGATE_ALERT_STUCK_SECONDS = env.int("TOLLGATE_ALERT_STUCK_SECONDS", 60, minimum=1)

# Metric label dimensions to leave out ("org", "feature", "model"): their label becomes "-"
# so names an org wants kept out of Prometheus never reach it.
TOLLGATE_METRICS_OMIT_LABELS = frozenset(env.list("TOLLGATE_METRICS_OMIT_LABELS", []))
if TOLLGATE_METRICS_OMIT_LABELS - {"org", "feature", "model"}:
    raise ImproperlyConfigured(
        "TOLLGATE_METRICS_OMIT_LABELS may name only org, feature and model (comma-separated)"
    )
# Celery workers serve their own /metrics on this port (0 = not served); Prometheus scrapes it.
TOLLGATE_WORKER_METRICS_PORT = env.int("TOLLGATE_WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)

# The burst queue (jobs): a job not started this long after it was accepted expires
# (a client may ask for less with X-Tollgate-Job-Max-Age).
TOLLGATE_JOB_MAX_AGE_SECONDS = env.int("TOLLGATE_JOB_MAX_AGE_SECONDS", 3600, minimum=1)
# Upstream attempts per job (provider 429, 5xx, timeouts) before it fails into the dead
# letters; backoff between them doubles from the base up to the cap, with jitter.
TOLLGATE_JOB_MAX_ATTEMPTS = env.int("TOLLGATE_JOB_MAX_ATTEMPTS", 5, minimum=1, maximum=100)
TOLLGATE_JOB_RETRY_BASE_SECONDS = env.float("TOLLGATE_JOB_RETRY_BASE_SECONDS", 1.0, minimum=0.01)
TOLLGATE_JOB_RETRY_MAX_SECONDS = env.float("TOLLGATE_JOB_RETRY_MAX_SECONDS", 60.0, minimum=0.01)
# A running job whose worker stopped renewing its lease this long is run again.
TOLLGATE_JOB_LEASE_SECONDS = env.float("TOLLGATE_JOB_LEASE_SECONDS", 30.0, minimum=1.0)
# Job pumps running at once (each is one worker slot) and provider calls in flight per
# pump. One pump serves strictly in order; more pumps add throughput but may start a
# lower-priority job a moment early.
TOLLGATE_JOB_PUMPS = env.int("TOLLGATE_JOB_PUMPS", 1, minimum=1)
TOLLGATE_JOB_CONCURRENCY = env.int("TOLLGATE_JOB_CONCURRENCY", 64, minimum=1)
# A pump hands its slot back after this long (the next pump carries on).
TOLLGATE_JOB_PUMP_SECONDS = env.float("TOLLGATE_JOB_PUMP_SECONDS", 20.0, minimum=1.0)
# Per provider: this many failed calls in a row open the breaker; after the pause one
# probe call may go (half-open) and closes it again on success.
TOLLGATE_PROVIDER_BREAKER_FAILURES = env.int("TOLLGATE_PROVIDER_BREAKER_FAILURES", 5, minimum=1)
TOLLGATE_PROVIDER_BREAKER_SECONDS = env.float(
    "TOLLGATE_PROVIDER_BREAKER_SECONDS", 30.0, minimum=0.1
)
# Finished jobs (and their answers) are kept this many days, then deleted.
TOLLGATE_JOB_RETENTION_DAYS = env.int("TOLLGATE_JOB_RETENTION_DAYS", 7, minimum=1)
# Job callbacks go only to public addresses unless this allows loopback, private and
# link-local ones too (a gateway whose receivers live on the internal network).
TOLLGATE_JOB_CALLBACK_PRIVATE = env.bool("TOLLGATE_JOB_CALLBACK_PRIVATE", False)
# Job callbacks: attempts per result and the timeout of each.
TOLLGATE_JOB_CALLBACK_ATTEMPTS = env.int("TOLLGATE_JOB_CALLBACK_ATTEMPTS", 5, minimum=1)
TOLLGATE_JOB_CALLBACK_TIMEOUT = env.float("TOLLGATE_JOB_CALLBACK_TIMEOUT", 10.0, minimum=0.1)

# Client requests larger than this get 413.
TOLLGATE_MAX_BODY_BYTES = env.int("TOLLGATE_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)

LOG_LEVEL = env.str("TOLLGATE_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"TOLLGATE_LOG_LEVEL={LOG_LEVEL!r} is not a log level")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

SENTRY_DSN = env.optional_str("SENTRY_DSN")
if SENTRY_DSN:
    env.url("SENTRY_DSN", schemes={"http", "https"})
    import sentry_sdk

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", "production"),
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", 0.0),
        send_default_pii=False,
    )
