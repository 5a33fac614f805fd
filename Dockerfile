# outguard service image: multi-stage, non-root, with a health check.
# Build: docker build -t outguard .
# Run:   docker run -p 8000:8000 -e OUTGUARD_TOKENS='{"CHANGE-ME": ["score", "feedback"]}' -v outguard-data:/var/lib/outguard outguard

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY features ./features
COPY training ./training
COPY models ./models
# Serving dependencies only: the `training` extra (full MLflow, Dask) stays out of the image;
# the MLflow registry client (mlflow-skinny) is in, for OUTGUARD_MODEL_SOURCE=registry.
RUN pip install .

FROM python:3.11-slim AS runtime
# LightGBM links against OpenMP at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/outguard --create-home outguard
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OUTGUARD_HOST=0.0.0.0 \
    OUTGUARD_PORT=8000 \
    OUTGUARD_STATE_DIR=/var/lib/outguard \
    OUTGUARD_DATABASE_URL=sqlite:////var/lib/outguard/outguard.db
USER outguard
WORKDIR /var/lib/outguard
VOLUME ["/var/lib/outguard"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Binding 0.0.0.0 requires OUTGUARD_TOKENS: without tokens the service refuses to start.
CMD ["outguard", "serve"]
