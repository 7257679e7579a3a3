FROM python:3.12-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOLLGATE_HOME=/var/lib/tollgate \
    TOLLGATE_STATIC_ROOT=/app/static

RUN useradd --system --create-home --home-dir /var/lib/tollgate tollgate
WORKDIR /app

COPY pyproject.toml requirements.lock README.md ./
COPY gateway gateway
COPY policies policies
COPY alerts alerts
COPY audit audit
COPY templates templates
COPY manage.py ./
RUN pip install -c requirements.lock . \
    && SECRET_KEY=build-only-placeholder-secret-key-0000000000 \
       TOLLGATE_ENCRYPTION_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
       DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost:6379/0 \
       python manage.py collectstatic --noinput -v 0

USER tollgate
EXPOSE 8000
CMD ["sh", "-c", "uvicorn gateway.asgi:application --host 0.0.0.0 --port 8000 --workers ${GATEWAY_WORKERS:-2} --no-access-log"]
