# StreamFlow container image: `streamflow` as the entry point, run as a non-root user.
#
#   docker build -t REGISTRY/streamflow:0.1.0 .
#   docker build --build-arg EXTRAS=otel -t REGISTRY/streamflow:0.1.0 .   # with optional extras
#   docker run --rm REGISTRY/streamflow:0.1.0 validate /etc/streamflow/topology.yaml
#
# Every dependency ships as a binary wheel for this base, so no compiler is installed
# (check that still holds when adding one).
# The Helm chart (helm/streamflow) runs this image with a read-only root filesystem and an
# emptyDir on /tmp; probes come from the chart, so the image has no HEALTHCHECK.
FROM python:3.11-slim

# Comma-separated optional extras of the package to install, e.g. "otel"; empty for none.
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 streamflow \
    && useradd --system --uid 10001 --gid streamflow --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin streamflow

WORKDIR /opt/streamflow
COPY pyproject.toml README.md ./
COPY streamflow/ ./streamflow/
RUN pip install --no-cache-dir "./${EXTRAS:+[$EXTRAS]}" \
    && streamflow --help >/dev/null

# Workers expose /healthz and /metrics on 9102 (--metrics-port); the gateway serves on 8080.
EXPOSE 8080 9102
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["streamflow"]
CMD ["--help"]
