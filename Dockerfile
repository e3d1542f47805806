# One image for every stocksync process of docker-compose.yml: the CLI (migrations), the dramatiq
# workers, the scheduler, the intake and the sandbox.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# METRICS_HOST stays the loopback default here: compose sets 0.0.0.0 on the services Prometheus scrapes.

WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY clients ./clients
COPY core ./core
COPY db ./db
COPY pipelines ./pipelines
COPY runtime ./runtime
COPY sandbox ./sandbox
COPY workers ./workers
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin stocksync
USER stocksync

CMD ["stocksync", "--help"]
