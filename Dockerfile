# wsgiproxy: gunicorn with gevent workers, non-root, the proxy on :8080, metrics on :8090.
#   docker build -t wsgiproxy .
#   docker run -p 127.0.0.1:8080:8080 -p 127.0.0.1:8090:8090 -v $PWD/config/proxyConfig.yaml:/app/config/proxyConfig.yaml wsgiproxy
FROM python:3.11.14-slim-bookworm

# WEB_CONCURRENCY: gunicorn's worker processes. The image must not take the node's core
# count (the setting's default when empty): a container sees every core of its host, so on a
# 64-core node a pod limited to 600m would start 64 workers. 2 is the default for a
# container run by hand; set it to the CPUs you give the container (k8s/deployment.yaml
# and docker-compose.yml set their own).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080 \
    METRICS_ADDR=:8090 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/wsgiproxy-metrics \
    WEB_CONCURRENCY=2

WORKDIR /app

# Dependencies in their own layer: rebuilt only when the pins change.
COPY requirements-runtime.txt .
RUN pip install --no-cache-dir -r requirements-runtime.txt

COPY wsgiproxy/ wsgiproxy/
COPY config/ config/
COPY gunicorn.conf.py .
# A bad WEB_CONCURRENCY is one line and exit 2 before gunicorn reads it
# (wsgiproxy/preflight.py).
COPY scripts/preflight_pth.py scripts/
RUN python scripts/preflight_pth.py /app
# A system user with no home and no shell; gunicorn's config empties the metrics
# directory at start, so a stale one from a restarted container is never summed in.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin wsgiproxy \
    && mkdir -p /tmp/wsgiproxy-metrics && chown wsgiproxy /tmp/wsgiproxy-metrics
USER 10001

EXPOSE 8080 8090

# The documented command: gunicorn reads /app/gunicorn.conf.py by itself (binds
# 0.0.0.0:$PORT, metrics on METRICS_ADDR, SIGHUP reloads routes, SIGTERM drains).
CMD ["gunicorn", "-k", "gevent", "wsgiproxy:app"]
