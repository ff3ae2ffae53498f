#!/usr/bin/env bash
# `make host-test`: docs/deploying.md's host install and systemd recipes, run as written (as
# root) inside a private mount namespace whose /opt, /usr/local, /usr/share/doc and
# /etc are throwaway overlays, so the machine itself is left as it was. Then what the
# recipes promise: the installed command runs, the S3 and Parquet extras are in its
# venv, `systemd-analyze verify` accepts the installed unit with its real ExecStart,
# the unit's Documentation= exists, and the service's unprivileged user can check the
# installed config with the token handed over as LoadCredential= would.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != --inside ]; then
    [ "$(id -u)" = 0 ] || { echo "host-test: needs root (it installs into /opt, /usr/local, /etc)" >&2; exit 1; }
    WORK=$(mktemp -d /tmp/acexport-host-test.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    export WORK
    exec unshare --mount --propagation private "$0" --inside
fi

mkdir -p /opt
for dir in /opt /usr/local /usr/share/doc /etc; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$WORK/$name/upper" "$WORK/$name/work"
    mount -t overlay overlay \
        -o "lowerdir=$dir,upperdir=$WORK/$name/upper,workdir=$WORK/$name/work" "$dir"
done
fail() { echo "host-test: FAILED: $*" >&2; exit 1; }
recipe() {  # the indented lines after the marker $1 in file $2, unindented
    awk -v marker="$1" 'index($0, marker) {on = 1; next}
        on && /^    / {sub(/^    /, ""); print; seen = 1; next}
        on && seen && NF {exit}' "$2"
}

host_lines=$(recipe '<!-- host recipe' docs/deploying.md)
[ -n "$host_lines" ] || fail "docs/deploying.md has no host install recipe"
bash -euo pipefail -c "$host_lines" >"$WORK/host.out" 2>&1 \
    || { tail -30 "$WORK/host.out" >&2; fail "docs/deploying.md's host install recipe failed"; }
[ "$(tail -1 "$WORK/host.out")" = "acexport $(sed -n 's/^__version__ = "\(.*\)"/\1/p' daemon/acexport/__init__.py)" ] \
    || fail "the installed acexport says '$(tail -1 "$WORK/host.out")'"
/opt/acexport/bin/python -c "import aiobotocore, duckdb, acexport.output.s3, acexport.payload.parquet" \
    || fail "the host install lacks the S3 or Parquet extra"
[ "$(readlink -f "$(command -v acexport)")" = "$(readlink -f /opt/acexport/bin/acexport)" ] \
    || fail "acexport on PATH is $(command -v acexport), not the venv's"
echo "host-test: docs/deploying.md's host install works ($(tail -1 "$WORK/host.out"), S3 and Parquet extras)"

# The systemd recipe, but for `systemctl` (no systemd runs here).
unit_lines=$(recipe '<!-- systemd recipe' docs/deploying.md | grep -v '^systemctl ')
[ "$(echo "$unit_lines" | wc -l)" = 4 ] || fail "docs/deploying.md's systemd recipe is not the 4 install lines and systemctl"
[ "$unit_lines" = "$(sed -n 's/^#   \(install .*\)/\1/p' systemd/acexport.service)" ] \
    || fail "docs/deploying.md's systemd install lines are not the unit header's"
ACME_TOKEN=host-test-token bash -euo pipefail -c "$unit_lines" \
    || fail "docs/deploying.md's systemd install lines failed"
verify=$(systemd-analyze verify /etc/systemd/system/acexport.service 2>&1) || true
[ -z "$verify" ] || fail "systemd-analyze verify on the installed unit: $verify"
doc=$(sed -n 's#^Documentation=file://##p' /etc/systemd/system/acexport.service)
[ -n "$doc" ] && [ -s "$doc" ] || fail "the unit's Documentation= ($doc) does not exist"
echo "host-test: the installed unit verifies (ExecStart and Documentation= exist)"

# What the service would do at start, as an unprivileged uid: the credential as
# LoadCredential= hands it over, the config as installed (token_file made relative, the
# edit the unit's header shows), the defaults file the unit names.
sed -i 's#^token_file = "/run/credentials/acexport.service/acme"#token_file = "acme"#' /etc/acexport/config.toml
chmod 0711 "$WORK"  # mktemp made it 0700: the service user must reach its credential
mkdir -m 0755 "$WORK/credentials"
install -m 0400 -o 65534 /etc/acexport/credentials/acme "$WORK/credentials/acme"
defaults=$(sed -n 's/^Environment=ACEXPORT_DEFAULTS=//p' /etc/systemd/system/acexport.service)
CREDENTIALS_DIRECTORY="$WORK/credentials" ACEXPORT_DEFAULTS="$defaults" \
    setpriv --reuid=65534 --regid=65534 --clear-groups \
    /usr/local/bin/acexport check-config --config /etc/acexport/config.toml >"$WORK/check.out" 2>&1 \
    || { cat "$WORK/check.out" >&2; fail "check-config as the service's user failed"; }
grep -q 'state dir: /var/lib/acexport' "$WORK/check.out" || fail "the unit's defaults are not in force: $(cat "$WORK/check.out")"
echo "host-test: the service's user reads the installed config and its credential"

# A second workspace: docs/deploying.md's drop-in as written (but for systemctl), the unit
# with it verified, and its credential read beside the first one's.
beta_lines=$(recipe '<!-- systemd second workspace recipe' docs/deploying.md | grep -v '^systemctl ')
[ -n "$beta_lines" ] || fail "docs/deploying.md has no second-workspace recipe"
BETA_TOKEN=host-test-beta bash -euo pipefail -c "$beta_lines" \
    || fail "docs/deploying.md's second-workspace lines failed"
verify=$(systemd-analyze verify /etc/systemd/system/acexport.service 2>&1) || true
[ -z "$verify" ] || fail "systemd-analyze verify with the drop-in: $verify"
grep -qx 'LoadCredential=beta:/etc/acexport/credentials/beta' \
    /etc/systemd/system/acexport.service.d/beta.conf || fail "the drop-in lacks the credential"
printf '\n[workspaces.beta]\ntoken_file = "beta"\n' >> /etc/acexport/config.toml
install -m 0400 -o 65534 /etc/acexport/credentials/beta "$WORK/credentials/beta"
CREDENTIALS_DIRECTORY="$WORK/credentials" ACEXPORT_DEFAULTS="$defaults" \
    setpriv --reuid=65534 --regid=65534 --clear-groups \
    /usr/local/bin/acexport check-config --config /etc/acexport/config.toml >"$WORK/check.out" 2>&1 \
    || { cat "$WORK/check.out" >&2; fail "check-config with the second workspace failed"; }
grep -q 'workspace beta' "$WORK/check.out" || fail "the second workspace is not in force"
echo "host-test: a second workspace's credential, added by the drop-in, is read"
echo "host-test: passed"
