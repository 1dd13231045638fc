# syntax=docker/dockerfile:1
# The dialer image: `dialer worker` by default; Kubernetes passes `api` or `migrate` as args.
# Build: docker build -t registry.example.com/pgdialer:0.1.0 .   (no secrets are needed or copied)

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# pyproject force-includes queue/ (the SQL: schema, migrations, named queries) into the wheel.
COPY pyproject.toml README.md ./
COPY dialer/ dialer/
COPY scheduler/ scheduler/
COPY metrics/ metrics/
COPY queue/ queue/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# Numeric ids, so Kubernetes' runAsNonRoot can verify them (runAsUser 10001 in k8s/base).
RUN groupadd --system --gid 10001 dialer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dialer
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# 8080: worker callbacks, /metrics, /healthz, /readyz. 8081: the REST API.
EXPOSE 8080 8081
# Kubernetes probes replace a Docker health check.
HEALTHCHECK NONE
# Exec form: SIGTERM reaches Python (PID 1), which drains within DIALER_SHUTDOWN_GRACE_SECONDS.
ENTRYPOINT ["dialer"]
CMD ["worker"]
