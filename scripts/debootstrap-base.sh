#!/usr/bin/env bash
# Build a local Debian base image for the Dockerfile when no image registry is reachable.
#
# Usage: scripts/debootstrap-base.sh [IMAGE_TAG]
#
# debootstraps a minimal Debian (minbase variant) from the configured apt mirror and imports it into
# podman under the tag the Dockerfile's FROM line uses (default: docker.io/library/debian:bookworm-slim),
# so that `podman build --pull=never` finds it. Needs root, debootstrap and podman.
#
# Environment:
#   DDASR_BASE_SUITE   Debian suite (default: bookworm, matching the Dockerfile's FROM)
#   DDASR_BASE_MIRROR  apt mirror (default: http://deb.debian.org/debian)
#   DDASR_BASE_WORK    scratch folder for the root file system (default: /tmp/ddasr-debootstrap)
set -euo pipefail

TAG=${1:-docker.io/library/debian:bookworm-slim}
SUITE=${DDASR_BASE_SUITE:-bookworm}
MIRROR=${DDASR_BASE_MIRROR:-http://deb.debian.org/debian}
WORK=${DDASR_BASE_WORK:-/tmp/ddasr-debootstrap}

if podman image exists "$TAG"; then
    echo "base image $TAG already present"
    exit 0
fi
command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
}

rootfs="$WORK/rootfs-$SUITE"
rm -rf "$rootfs"
mkdir -p "$rootfs"
start=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR"
# Same slimming the official -slim images do: no apt lists, no docs or man pages, no caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
# A security mirror as in the official image.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
tar --numeric-owner -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$TAG"
rm -rf "$rootfs"
echo "imported $TAG in $(( $(date +%s) - start )) s"
