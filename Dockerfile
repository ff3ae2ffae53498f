# acexport in a container: config at /etc/acexport/config.toml, state and exports in
# /var/lib/acexport, tokens as files (Docker/Kubernetes secrets) via token_file.
# With compose: docs/deploying.md, "Compose". With docker alone, from the repository's root
# (deploy/image-test.sh runs these lines with podman):
#
#   docker build -t acexport --build-arg VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' daemon/acexport/__init__.py)" .
#   docker run -d --name acexport -p 9464:9464 \
#     -v "$PWD/deploy/compose/config.toml:/etc/acexport/config.toml:ro" \
#     -v "$PWD/deploy/compose/acme.token:/run/secrets/acme_token:ro" \
#     -v acexport-data:/var/lib/acexport acexport
#
# The token file must be readable by the image's user, uid 10001 (a bind mount keeps
# the host's owner and mode): `install -m 0400 -o 10001 /dev/stdin deploy/compose/acme.token`.

# Build stage: wheels of acexport, its S3 extra and their dependencies (compilers stay here).
FROM python:3.11-slim AS build
# A C compiler for acexport's line scans (setup.py); it stays in this stage. Debian's
# current gcc, whatever its version: the extension is plain C99 (so DL3008 is ignored).
# hadolint ignore=DL3008
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[s3,parquet]'

# Runtime stage: the wheels installed, no sources, no build tools, a non-root user.
FROM python:3.11-slim
# The package's version (acexport.__version__), given by the build: the image test
# checks the label against `acexport --version` inside.
ARG VERSION=unknown
LABEL org.opencontainers.image.title="acexport" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/acexport acexport \
    && mkdir -p /etc/acexport /var/lib/acexport/exports \
    && chown -R acexport /var/lib/acexport
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Image defaults sit beneath the mounted config: a value in the file always wins
# (environment variables would beat it, so the image sets none of the settings).
COPY config/container-defaults.toml /usr/local/share/acexport/defaults.toml
ENV ACEXPORT_CONFIG=/etc/acexport/config.toml \
    ACEXPORT_DEFAULTS=/usr/local/share/acexport/defaults.toml \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /var/lib/acexport
VOLUME ["/etc/acexport", "/var/lib/acexport"]
# Asks where the config says the daemon listens (the slim image has no curl anyway).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["acexport", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["acexport"]
CMD ["run"]
