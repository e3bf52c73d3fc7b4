# One image for every service of the platform; the service package is the command:
#
#   docker build -t pyairtable-platform .
#   docker run --rm -p 8001:8001 -e JWT_SECRET=... pyairtable-platform auth_service
#   docker run --rm -e AUTH_DATABASE_URL=... pyairtable-platform auth_service migrate
#
# docker-compose.phase1.yml runs it against PostgreSQL and Redis (see deploy/README.md).
# The base image pinned by exact tag and by digest (the multi-platform index): a rebuild starts
# from the same bytes. To move it, see deploy/README.md ("Pinned versions").
FROM python:3.11.16-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies first, in their own layer: it is rebuilt only when the lock changes. Exactly the
# versions and files requirements-runtime.lock names (`make lock`), each checked against its hash;
# the lock also pins the build backend, so the platform below builds without fetching anything.
WORKDIR /src
COPY requirements-runtime.lock ./
RUN pip install --require-hashes -r requirements-runtime.lock \
    && rm -rf /src/*

# Then the platform itself, installed into site-packages; the sources do not stay in the image.
COPY shared/ shared/
COPY auth_service/ auth_service/
COPY user_service/ user_service/
COPY airtable_gateway/ airtable_gateway/
COPY analytics_service/ analytics_service/
COPY gateway/ gateway/
COPY embedded/ embedded/
COPY pyproject.toml README.md ./
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf /src

# Run from a directory without sources, so `python -m <service>` imports the installed package.
# DATA_DIR only matters without a database URL (SQLite) and for development keys.
WORKDIR /app
RUN mkdir -p /app/data && chown app:app /app/data
ENV HOST=0.0.0.0 \
    DATA_DIR=/app/data

USER app:app
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m"]
CMD ["auth_service"]
