#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: the Debian packages the daemon, the lab
# and the tests use (installed only when missing) and a .venv with waltd and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  docker-registry apache2-utils skopeo podman buildah runc dnsmasq-base-lua lua5.4
  busybox-static klibc-utils isc-dhcp-client tftp-hpa nfs-ganesha nfs-ganesha-vfs
  libnfs-utils rpcbind dbus iproute2 util-linux procps docker.io
  qemu-system-x86 ipxe-qemu ipxe iptables
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.waltd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip warns about absent local mirror folders on some machines; keep real errors
  .venv/bin/pip install -q -e '.[test]' 2> >(grep -v 'is ignored: it is neither' >&2)
  touch "$stamp"
fi
