#!/usr/bin/env bash
# Install everything bdr's build and VM lab need on a fresh Debian 12 machine: the build's
# C dependencies (libdevmapper, libclang for the devicemapper crate's bindgen), QEMU, Debian's 6.1 kernel
# and the 6.12 kernel from bookworm-backports (images + headers), the tools the guest suite
# runs, and virtme-ng. Idempotent: a second run only checks.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "install.sh: must run as root (apt-get)" >&2
	exit 1
fi

stamp=/var/lib/bdr-lab.installed.v4
if [ -f "$stamp" ] && command -v vng >/dev/null && ls /boot/vmlinuz-6.1.0-* >/dev/null 2>&1 &&
	ls /boot/vmlinuz-6.12.* >/dev/null 2>&1; then
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# bookworm-backports from the same archive apt already uses.
bp=/etc/apt/sources.list.d/bdr-backports.sources
if [ ! -f "$bp" ]; then
	uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$uri" ] || uri=$(awk '/^deb / && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$uri" ] || uri=http://deb.debian.org/debian
	cat >"$bp" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

apt-get update -q
apt-get install -y -q --no-install-recommends \
	linux-image-amd64 linux-headers-amd64 kmod fio dmsetup e2fsprogs \
	xfsprogs wireguard-tools wireguard-go tcpdump busybox-static iproute2 util-linux procps udev python3-pip \
	make gcc bc flex bison libelf-dev libssl-dev \
	pkg-config libdevmapper-dev libclang-dev clang rsync drbd-utils fonts-dejavu-core
# QEMU from backports too: the machine may already carry qemu-utils from there, which breaks
# bookworm's qemu-system-common.
apt-get install -y -q --no-install-recommends -t bookworm-backports \
	qemu-system-x86 linux-image-amd64 linux-headers-amd64

# Both kernels are wanted side by side: keep apt from calling either "unused".
apt-mark manual 'linux-image-6.1.0-*-amd64' 'linux-headers-6.1.0-*-amd64' \
	'linux-image-6.12.*-amd64' 'linux-headers-6.12.*-amd64' >/dev/null 2>&1 || true

if ! command -v vng >/dev/null; then
	# pip of a pyenv/venv Python takes it as is; Debian's own pip wants the override.
	pip install -q virtme-ng 2>/dev/null || python3 -m pip install -q --break-system-packages virtme-ng
fi

ls /boot/vmlinuz-6.1.0-* /boot/vmlinuz-6.12.* >/dev/null
touch "$stamp"
