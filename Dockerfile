# The Distillery service (API + embedded worker). Teachers are vLLM servers reached over HTTP, so the
# image carries no model and no torch; `docker compose up` wires it to Postgres and a GPU vLLM server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/distillery

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install -e . && useradd --system --uid 10001 distillery && mkdir -p /data && chown distillery /data
USER distillery

ENV DISTILLERY_DATA_DIR=/data DISTILLERY_HOST=0.0.0.0 DISTILLERY_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
CMD ["distillery", "serve"]
