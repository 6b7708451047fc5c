# syntax=docker/dockerfile:1
# RepoVault image: one image, three entry points (rv, rv-injector, rv-worker).
#   docker build -t repovault:0.1.0 .
# Stage 1 builds the project wheel and every dependency wheel; stage 2 installs them into a
# slim runtime with git (the worker runs `git bundle` / `git cat-file`) and a non-root user.
# No secret is baked in: every setting comes from RV_* variables at run time.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# .dockerignore keeps the context to pyproject.toml and the three packages.
COPY . .
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RV_WORK_DIR=/var/lib/repovault/work
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rv \
    && useradd --system --uid 10001 --gid rv --home-dir /home/rv --create-home \
        --shell /usr/sbin/nologin rv \
    && install -d -o rv -g rv -m 0750 /var/lib/repovault /var/lib/repovault/work \
        /home/rv/.config /home/rv/.config/rv
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels repovault \
    && rv --help >/dev/null
USER rv:rv
WORKDIR /home/rv
# 58180: injector intake, /healthz, /metrics; 58181: worker /healthz, /metrics.
EXPOSE 58180 58181
CMD ["rv", "--help"]
