#!/usr/bin/env bash
# Fetches and builds the guest assets of vireo's end-to-end tests into
# tests/e2e/assets/ (git-ignored), from the npm registry and Debian's archive only:
#
#   libv86.mjs, v86.wasm      npm v86@0.5.462 (the x86 PC emulator the tests run in-process)
#   bios.bin, vgabios.bin     Debian seabios (bios.bin, vgabios-stdvga.bin)
#   vmlinuz                   Debian i386 linux-image-6.1.0-NN-686 (what linux-image-686 depends on)
#   initramfs.gz              busybox-static:i386, the virtio modules, tests/e2e/guest/init
#   MANIFEST                  versions and checksums of all of the above
#
# Cached: when assets/MANIFEST exists and was made from the same inputs (this
# script, make_initramfs.ts and tests/e2e/guest/), nothing is done. Downloads are
# kept in assets/downloads/, so changing the guest scripts only repacks the
# initramfs. Any failure to fetch stops the script with a non-zero status.
#
# apt runs with a private state directory (assets/.apt): the host's sources
# are used as they are, i386 is added for these look-ups only, and neither root
# nor `dpkg --add-architecture` is needed.
#
# Environment: DENO (a deno command; default `deno` on PATH, else `npx -y deno@2.9.6`),
# VIREO_E2E_ASSETS (another output directory), FORCE=1 (rebuild everything).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${VIREO_E2E_ASSETS:-$HERE/assets}"
V86_VERSION="0.5.462"
MODULES=(failover net_failover virtio virtio_ring virtio_pci_modern_dev
  virtio_pci_legacy_dev virtio_pci virtio_net virtio_blk)
START=$(date +%s.%N)

die() {
  echo "fetch_assets.sh: $*" >&2
  exit 1
}
log() { echo "== $*"; }

if [ -n "${DENO:-}" ]; then
  read -r -a DENO_CMD <<<"$DENO"
elif command -v deno >/dev/null 2>&1; then
  DENO_CMD=(deno)
else
  DENO_CMD=(npx -y "deno@2.9.6")
fi
for tool in npm apt-get apt-cache dpkg-deb sha256sum tar; do
  command -v "$tool" >/dev/null 2>&1 || die "needs '$tool' on PATH"
done

# The cache key: everything that shapes the assets.
KEY=$(cat "$HERE/fetch_assets.sh" "$HERE/make_initramfs.ts" \
  $(find "$HERE/guest" -type f | LC_ALL=C sort) | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/MANIFEST" ] &&
  grep -qx "key $KEY" "$OUT/MANIFEST"; then
  for f in libv86.mjs v86.wasm bios.bin vgabios.bin vmlinuz initramfs.gz; do
    [ -s "$OUT/$f" ] || die "$OUT/$f is missing although MANIFEST is current: rerun with FORCE=1"
  done
  echo "fetch_assets.sh: $OUT is up to date (key $KEY)"
  exit 0
fi
[ "${FORCE:-0}" = 1 ] && rm -rf "$OUT/downloads"
mkdir -p "$OUT/downloads"
rm -f "$OUT/MANIFEST"

# ---- v86 from npm -------------------------------------------------------------
TGZ="$OUT/downloads/v86-$V86_VERSION.tgz"
if [ ! -s "$TGZ" ]; then
  log "npm pack v86@$V86_VERSION"
  (cd "$OUT/downloads" && npm pack --silent "v86@$V86_VERSION" >/dev/null) ||
    die "cannot fetch v86@$V86_VERSION from the npm registry"
fi
[ -s "$TGZ" ] || die "npm pack did not produce $TGZ"
tar -xzf "$TGZ" -C "$OUT/downloads" package/build/libv86.mjs package/build/v86.wasm ||
  die "$TGZ lacks build/libv86.mjs or build/v86.wasm"
mv "$OUT/downloads/package/build/libv86.mjs" "$OUT/downloads/package/build/v86.wasm" "$OUT/"
rm -rf "$OUT/downloads/package"

# ---- Debian packages ----------------------------------------------------------
APTDIR="$OUT/.apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
APT_OPTS=(-o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
  -o "APT::Architectures::=amd64" -o "APT::Architectures::=i386" -o "Debug::NoLocking=1")
# As root, apt would drop to _apt, which cannot write into the assets directory.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o "APT::Sandbox::User=root")
log "apt-get update (private state, amd64 + i386)"
# A partial update (one mirror mid-sync) is tolerated; missing packages fail below.
apt-get -qq "${APT_OPTS[@]}" update >"$APTDIR/update.log" 2>&1 ||
  echo "fetch_assets.sh: warning: apt-get update reported errors (see $APTDIR/update.log)" >&2

KPKG=$(apt-cache "${APT_OPTS[@]}" depends linux-image-686:i386 2>/dev/null |
  sed -nE 's/^ *Depends: (linux-image-[0-9][^: ]*-686)(:i386)?$/\1/p' | head -n 1)
[ -n "$KPKG" ] || die "cannot resolve linux-image-686:i386 to a versioned kernel package"
KVER=${KPKG#linux-image-}

fetch_deb() { # name[:arch] -> path of the .deb in downloads/
  local spec=$1 name=${1%%:*} found
  found=$(ls "$OUT/downloads/${name}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$found" ]; then
    log "apt-get download $spec" >&2
    (cd "$OUT/downloads" && apt-get -qq "${APT_OPTS[@]}" download "$spec" >&2) ||
      die "cannot download $spec from the Debian archive"
    found=$(ls "$OUT/downloads/${name}_"*.deb 2>/dev/null | head -n 1 || true)
  fi
  [ -n "$found" ] || die "apt-get download $spec produced no .deb"
  echo "$found"
}
KDEB=$(fetch_deb "$KPKG:i386")
BBDEB=$(fetch_deb "busybox-static:i386")
SBDEB=$(fetch_deb "seabios")

WORK="$OUT/.work"
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/seabios"
log "extracting $(basename "$KDEB") $(basename "$BBDEB") $(basename "$SBDEB")"
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"
dpkg-deb -x "$SBDEB" "$WORK/seabios"

cp "$WORK/seabios/usr/share/seabios/bios.bin" "$OUT/bios.bin" || die "seabios has no bios.bin"
cp "$WORK/seabios/usr/share/seabios/vgabios-stdvga.bin" "$OUT/vgabios.bin" ||
  die "seabios has no vgabios-stdvga.bin"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz" || die "$KPKG has no /boot/vmlinuz-$KVER"

# ---- initramfs ------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT/bin" "$ROOT/lib/modules" "$ROOT/tests"
cp "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox" || die "busybox-static has no /bin/busybox"
ln -s busybox "$ROOT/bin/sh"
cp "$HERE/guest/init" "$ROOT/init"
chmod 755 "$ROOT/init"
if [ -d "$HERE/guest/tests" ]; then cp "$HERE/guest/tests/"*.sh "$ROOT/tests/" 2>/dev/null || true; fi
for m in "${MODULES[@]}"; do
  ko=$(find "$WORK/kernel/lib/modules/$KVER" \( -name "$m.ko" -o -name "$m.ko.xz" \) | head -n 1)
  [ -n "$ko" ] || die "$KPKG has no module $m"
  case "$ko" in
    *.xz) xz -dc "$ko" >"$ROOT/lib/modules/$m.ko" || die "cannot decompress $ko" ;;
    *) cp "$ko" "$ROOT/lib/modules/$m.ko" ;;
  esac
done
log "packing initramfs"
"${DENO_CMD[@]}" run --quiet --allow-read --allow-write "$HERE/make_initramfs.ts" \
  "$ROOT" "$OUT/initramfs.gz" || die "cannot pack the initramfs"
rm -rf "$WORK"

# ---- manifest -------------------------------------------------------------------
{
  echo "key $KEY"
  echo "v86 $V86_VERSION"
  echo "kernel $(basename "$KDEB")"
  echo "busybox $(basename "$BBDEB")"
  echo "seabios $(basename "$SBDEB")"
  echo "modules ${MODULES[*]}"
  (cd "$OUT" && sha256sum libv86.mjs v86.wasm bios.bin vgabios.bin vmlinuz initramfs.gz)
} >"$OUT/MANIFEST.tmp"
mv "$OUT/MANIFEST.tmp" "$OUT/MANIFEST"
END=$(date +%s.%N)
printf 'fetch_assets.sh: assets ready in %s (%.1f s)\n' "$OUT" "$(echo "$END - $START" | bc -l 2>/dev/null ||
  awk "BEGIN{print $END - $START}")"
