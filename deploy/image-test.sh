#!/usr/bin/env bash
# `make image-test`: validate compose.yaml, build the Dockerfile with podman and run
# the image as docs/deploying.md tells users to, then check what a user relies on:
#   the mounted config's values win over the image's defaults; /healthz and /metrics
#   answer through a published port; exports land in the data volume, owned by the
#   non-root user; SIGHUP reloads; `podman stop` exits 0 in the grace with nothing
#   partial; the HEALTHCHECK passes inside the container; the image size is reported.
# The emulator runs inside the container's own network namespace (podman exec), so no
# traffic leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(mktemp -d /tmp/acexport-image-test.XXXXXX)
NAME=acexport-image-test
BASE=docker.io/library/python:3.11-slim
PORT=19464
export CONTAINERS_CONF="$WORK/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
EOF
PODMAN=(podman --runtime runc)

cleanup() {
    "${PODMAN[@]}" rm -f -v "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# What an interrupted run may have left: its containers (podman's storage may still
# hold a name after the container is gone) and the Dockerfile recipe's volume.
for stale in "$NAME" acexport; do
    "${PODMAN[@]}" rm -f "$stale" >/dev/null 2>&1 || "${PODMAN[@]}" rm -f --storage "$stale" >/dev/null 2>&1 || true
done
"${PODMAN[@]}" volume rm -f acexport-data >/dev/null 2>&1 || true
fail() { echo "image-test: FAILED: $*" >&2; "${PODMAN[@]}" logs "$NAME" 2>&1 | tail -20 >&2 || true; exit 1; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
    || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap docker-compose >/dev/null
fi

# compose.yaml is valid (docker-compose only parses it here: no Docker daemon needed).
mkdir -p "$WORK/compose"
cp compose.yaml "$WORK/compose/"
cp -r deploy "$WORK/compose/deploy"
touch "$WORK/compose/config.toml" "$WORK/compose/acme.token"
docker-compose -f "$WORK/compose/compose.yaml" --profile monitoring config -q \
    || { echo "image-test: FAILED: compose.yaml does not validate" >&2; exit 1; }
echo "image-test: compose.yaml validates (docker-compose config)"

# The base image cannot be pulled here. TEST-ONLY STAND-IN: a minimal Debian with
# Python, imported under the base's exact name; the Dockerfile keeps the official base.
# A stand-in made before it needed Python's headers (the official image has them) is
# made anew.
if "${PODMAN[@]}" image exists "$BASE" && ! "${PODMAN[@]}" run --rm --entrypoint sh "$BASE" \
        -c 'for h in /usr/include/python3*/Python.h /usr/local/include/python3*/Python.h; do [ -f "$h" ] && exit 0; done; exit 1' \
        >/dev/null 2>&1; then
    "${PODMAN[@]}" rmi -f "$BASE" >/dev/null
fi
if ! "${PODMAN[@]}" image exists "$BASE" && ! "${PODMAN[@]}" pull -q "$BASE" >/dev/null 2>&1; then
    mirror=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | head -1 | awk '{print $2}')
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "image-test: building a test-only stand-in for $BASE from $mirror"
    debootstrap --variant=minbase \
        --include=python3,python3-dev,python3-venv,python3-pip,python-is-python3,ca-certificates,tzdata \
        bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    rm -f "$WORK"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/pip3 "$WORK/rootfs/usr/local/bin/pip"
    tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import -q - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' daemon/acexport/__init__.py)
"${PODMAN[@]}" build -q --format docker --isolation chroot --network host \
    --build-arg VERSION="$VERSION" \
    -v /etc/ssl/certs:/etc/ssl/certs:ro -t acexport:test . >/dev/null 2>"$WORK/build.err" \
    || { cat "$WORK/build.err" >&2; exit 1; }
label=$("${PODMAN[@]}" image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' acexport:test)
inside=$("${PODMAN[@]}" run --rm acexport:test --version)
[ "$inside" = "acexport $label" ] && [ "$label" = "$VERSION" ] \
    || fail "version label $label, acexport --version inside says '$inside', the package $VERSION"
echo "image-test: one version: the label, --version and the package say $VERSION"
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' acexport:test)
echo "image-test: image acexport:test is $((size / 1000000)) MB"

# The user's files: a config that says something the image's defaults say otherwise
# (output_dir), a token as a secret file, a data directory for the volume.
mkdir -p "$WORK/etc" "$WORK/data"
cat > "$WORK/etc/config.toml" <<'EOF'
[daemon]
output_dir = "/var/lib/acexport/from-my-config"
stop_grace = "5s"
pickup_interval = "1s"

[http]
poll_initial = "200ms"
poll_max = "1s"
retry_initial = "200ms"
retry_max = "1s"
max_attempts = 100

[workspaces.acme]
base_url   = "http://127.0.0.1:8080"
token_file = "/etc/acexport/acme.token"

[[jobs]]
name     = "daily"
workspace = "acme"
types    = ["page", "event"]
catch_up = "2d"
lag      = "0s"
EOF
echo "image-test-token" > "$WORK/etc/acme.token"
chmod 600 "$WORK/etc/config.toml" "$WORK/etc/acme.token"
chown -R 10001 "$WORK/etc" "$WORK/data"

# Podman schedules health checks with systemd timers; without systemd it says so on
# stderr (harmless: the check is run by hand below), so that goes to a file.
"${PODMAN[@]}" run -d --name "$NAME" \
    -v "$WORK/etc:/etc/acexport:ro" -v "$WORK/data:/var/lib/acexport" \
    -p "127.0.0.1:$PORT:9464" acexport:test >/dev/null 2>>"$WORK/podman.err" \
    || { cat "$WORK/podman.err" >&2; exit 1; }
"${PODMAN[@]}" exec -d "$NAME" acexport emulator --port 8080 --processing-time 0.2 \
    --records 20 --token acme=image-test-token >/dev/null

manifests() { find "$WORK/data/from-my-config" -name '*.manifest.json' 2>/dev/null | wc -l; }
for _ in $(seq 120); do
    [ "$(manifests)" -ge 4 ] && break
    sleep 0.5
done
[ "$(manifests)" -ge 4 ] || fail "expected 4 exports under the config's output_dir, got $(manifests)"
echo "image-test: the config's output_dir won; $(manifests) exports"

# The S3 extra is in the image: the store module imports its library.
"${PODMAN[@]}" exec "$NAME" python -c "import aiobotocore, acexport.output.s3" \
    || fail "the image lacks S3 support (acexport[s3])"
echo "image-test: S3 support (aiobotocore) is installed"

# The line scans were compiled in the build stage (setup.py; optional, so a build
# without a compiler would pass quietly and export at half speed).
"${PODMAN[@]}" exec "$NAME" python -c "import acexport.payload._linescan" \
    || fail "the image's acexport was built without its compiled line scans"
echo "image-test: the compiled line scans are installed"

# The Parquet extra is in the image: a one-off typed export inside the container.
"${PODMAN[@]}" exec -e T=image-test-token "$NAME" acexport export -q \
    --base-url http://127.0.0.1:8080 --token-env T --type page \
    --from 2026-11-01 --to 2026-11-01 --output /var/lib/acexport/page.parquet \
    || fail "a Parquet export inside the image failed (acexport[parquet])"
grep -q '"format": "parquet"' "$WORK/data/page.parquet.manifest.json" \
    || fail "the Parquet export wrote no Parquet manifest"
echo "image-test: Parquet support (DuckDB) is installed and writes typed files"

# The demo ships in the package: `docker run IMAGE demo` works (issue 25 item 7).
# Its state and exports go where the image's defaults put them (/var/lib/acexport).
demo_files=$(timeout 120 "${PODMAN[@]}" run --rm --entrypoint sh acexport:test -c \
    'acexport demo --once >/tmp/demo.log 2>&1 || { cat /tmp/demo.log; exit 1; }
     find /var/lib/acexport -name "*.manifest.json" | wc -l') \
    || fail "acexport demo --once failed inside the image: $demo_files"
[ "$demo_files" -ge 6 ] || fail "the demo inside the image exported $demo_files files, not >= 6"
echo "image-test: the demo runs inside the image ($demo_files exports)"

owner=$(stat -c %u "$(find "$WORK/data/from-my-config" -name '*.jsonl.gz' | head -1)")
[ "$owner" = 10001 ] || fail "exports owned by uid $owner, not the image's user 10001"

health=$(curl -sf "http://127.0.0.1:$PORT/healthz") || fail "/healthz not reachable on the published port"
echo "$health" | grep -q '"ok"' || fail "/healthz says $health"
# Read whole first: `curl | grep -q` fails under pipefail when grep stops reading early.
metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics") || fail "/metrics not served on the published port"
grep -q '^acexport_exports_total' <<<"$metrics" || fail "/metrics lacks acexport_exports_total"
echo "image-test: /healthz and /metrics answer on the published port"

"${PODMAN[@]}" healthcheck run "$NAME" >/dev/null || fail "the image's HEALTHCHECK failed"
echo "image-test: HEALTHCHECK passes"

"${PODMAN[@]}" kill -s HUP "$NAME" >/dev/null
reloaded() { grep -q config_reloaded <<<"$("${PODMAN[@]}" logs "$NAME" 2>&1)"; }
for _ in $(seq 40); do
    reloaded && break
    sleep 0.25
done
reloaded || fail "SIGHUP did not reload"
echo "image-test: SIGHUP reloads"

started=$(date +%s)
"${PODMAN[@]}" stop -t 20 "$NAME" >/dev/null 2>>"$WORK/podman.err"
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "podman stop: exit code $code"
[ $(($(date +%s) - started)) -le 20 ] || fail "podman stop took longer than the grace"
partial=$(find "$WORK/data" \( -name '*.part' -o -name '*.tmp' -o -name '*.spool' \) | wc -l)
[ "$partial" = 0 ] || fail "$partial partial files left"
echo "image-test: podman stop exits 0 in $(($(date +%s) - started)) s, nothing partial"

# From a fresh clone, as docs/deploying.md and the Dockerfile say: a copy of the repository's
# tracked files, the token written by docs/deploying.md's compose recipe, the lines run as
# written with podman as the engine (docker-compose speaks to podman's Docker API
# socket; `docker run` is `podman run`). The operator's one edit to
# deploy/compose/config.toml: the workspace's address is an emulator, started inside
# the container's network namespace, and polls are quick for a test.
CLONE="$WORK/clone"
mkdir -p "$CLONE"
git ls-files -z | xargs -0 cp --parents -t "$CLONE"
sed -i 's#"https://analytics.liferay.com"#"http://127.0.0.1:8080"#' "$CLONE/deploy/compose/config.toml"
grep -q '127.0.0.1:8080' "$CLONE/deploy/compose/config.toml" || fail "deploy/compose/config.toml names no base_url to edit"
printf '\n[http]\npoll_initial = "200ms"\npoll_max = "1s"\nretry_initial = "200ms"\nretry_max = "1s"\n' \
    >> "$CLONE/deploy/compose/config.toml"
"${PODMAN[@]}" tag acexport:test acexport:latest
podman system service --time=0 "unix://$WORK/podman.sock" >"$WORK/service.log" 2>&1 &
SERVICE=$!
cleanup_clone() {
    set +e
    (cd "$CLONE" && DOCKER_HOST="unix://$WORK/podman.sock" docker-compose down -v) >/dev/null 2>&1
    "${PODMAN[@]}" rm -f -v acexport >/dev/null 2>&1
    "${PODMAN[@]}" volume rm -f acexport-data >/dev/null 2>&1
    kill "$SERVICE" 2>/dev/null
    cleanup
}
trap cleanup_clone EXIT
for _ in $(seq 40); do [ -S "$WORK/podman.sock" ] && break; sleep 0.25; done
docker() {
    if [ "$1" = compose ]; then
        shift
        DOCKER_HOST="unix://$WORK/podman.sock" docker-compose "$@"
    else
        podman --runtime runc "$@"
    fi
}
export WORK CONTAINERS_CONF
export -f docker
recipe() {  # the indented lines after the marker $1 in file $2, unindented
    awk -v marker="$1" 'index($0, marker) {on = 1; next}
        on && /^    / {sub(/^    /, ""); print; seen = 1; next}
        on && seen && NF {exit}' "$2"
}
wait_caught_up() {  # $1: container; until `acexport status` inside exits 0 (nothing
    # waiting, failed or retrying), then at least 10 exports in its data volume
    for _ in $(seq 120); do
        "${PODMAN[@]}" exec "$1" acexport status >"$WORK/status.out" 2>&1 && break
        sleep 0.5
    done
    "${PODMAN[@]}" exec "$1" acexport status >"$WORK/status.out" 2>&1 \
        || { cat "$WORK/status.out" >&2; fail "$1: acexport status still exits non-zero"; }
    local n
    n=$("${PODMAN[@]}" exec "$1" find /var/lib/acexport/exports -name '*.manifest.json' | wc -l)
    [ "$n" -ge 10 ] || fail "$1: caught up with $n exports, not the week's windows and snapshots"
    echo "$n"
}

compose_lines=$(recipe '<!-- compose recipe' docs/deploying.md)
[ -n "$compose_lines" ] || fail "docs/deploying.md has no compose recipe"
(cd "$CLONE" && ACME_TOKEN=image-test-token bash -euo pipefail -c "$compose_lines") >"$WORK/compose.out" 2>&1 &
RECIPE=$!
for _ in $(seq 120); do
    container=$("${PODMAN[@]}" ps --filter label=com.docker.compose.service=acexport --format '{{.Names}}' | head -1)
    [ -n "$container" ] && break
    sleep 0.5
done
[ -n "$container" ] || {
    cat "$WORK/compose.out" >&2
    # The recipe publishes 9464: say who holds it, if anyone does (once seen in CI).
    ss -ltnp 2>/dev/null | grep ':9464 ' >&2
    fail "docker compose up started no container"
}
"${PODMAN[@]}" exec -d "$container" acexport emulator --port 8080 --processing-time 0.2 \
    --records 20 --token acme=image-test-token >/dev/null
wait "$RECIPE" || { cat "$WORK/compose.out" >&2; fail "docs/deploying.md's compose recipe failed"; }
grep -q '"ok"' "$WORK/compose.out" || { cat "$WORK/compose.out" >&2; fail "the recipe's /healthz did not say ok"; }
[ "$(stat -c '%u %a' "$CLONE/deploy/compose/acme.token")" = "10001 400" ] \
    || fail "the recipe's token file is not uid 10001, mode 0400"
n=$(wait_caught_up "$container")
(cd "$CLONE" && docker compose exec -T acexport acexport status) >"$WORK/status.out" 2>&1 \
    || { cat "$WORK/status.out" >&2; fail "acexport status in the compose service failed"; }
grep -q nightly "$WORK/status.out" || fail "status names no job nightly: $(cat "$WORK/status.out")"
(cd "$CLONE" && docker compose down -v) >/dev/null 2>&1 || fail "docker compose down failed"
echo "image-test: docs/deploying.md's compose recipe works from a fresh clone ($n exports, status clean)"

run_lines=$(sed -n 's/^#   //p' Dockerfile | sed -n '/^docker run/,/[^\\]$/p')
[ -n "$run_lines" ] || fail "the Dockerfile's header shows no docker run"
(cd "$CLONE" && bash -euo pipefail -c "$run_lines") >/dev/null 2>"$WORK/run.err" \
    || { cat "$WORK/run.err" >&2; fail "the Dockerfile's docker run failed"; }
"${PODMAN[@]}" exec -d acexport acexport emulator --port 8080 --processing-time 0.2 \
    --records 20 --token acme=image-test-token >/dev/null
n=$(wait_caught_up acexport)
curl -sf --retry 10 --retry-connrefused http://127.0.0.1:9464/healthz | grep -q '"ok"' \
    || fail "the docker run container's /healthz is not ok on port 9464"
"${PODMAN[@]}" rm -f -v -t 20 acexport >/dev/null
echo "image-test: the Dockerfile's docker run works as written ($n exports)"
echo "image-test: passed"
