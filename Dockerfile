# syntax=docker/dockerfile:1
# Build stage: a wheel of acexport and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compilers, no sources, a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/acexport acexport \
    && mkdir -p /etc/acexport /var/lib/acexport \
    && chown acexport /var/lib/acexport
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/* && rm -rf /wheels
USER acexport
VOLUME ["/var/lib/acexport"]
ENV ACEXPORT_CONFIG=/etc/acexport/config.toml
STOPSIGNAL SIGTERM
ENTRYPOINT ["acexport"]
CMD ["run"]
