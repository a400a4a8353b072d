# One image for migrate, api and worker: a non-editable install of the wheel, its dependencies pinned by
# deploy/requirements.lock. Teachers are vLLM servers reached over HTTP: no model and no torch in here.
FROM python:3.11-slim AS build
# A C compiler for the top-k scanner and the codecs' packers (app/teachers/_scan.c, app/codecs/_*.c); the
# wheel then carries them, the runtime needs none.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY distillery_tools ./distillery_tools
COPY distillery_student ./distillery_student
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY deploy/requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-deps -r /tmp/requirements.lock \
 && pip install --no-deps /wheels/*.whl \
 && rm -rf /wheels /tmp/requirements.lock \
 && useradd --system --uid 10001 distillery && mkdir -p /data && chown distillery /data
USER distillery
WORKDIR /data
ENV DISTILLERY_DATA_DIR=/data DISTILLERY_HOST=0.0.0.0 DISTILLERY_PORT=8000
EXPOSE 8000
# No HEALTHCHECK here: the image also runs workers and migrations, which serve no HTTP on 8000; the compose
# file puts a /readyz check on the API alone.
CMD ["distillery", "serve"]
