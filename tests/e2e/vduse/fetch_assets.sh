#!/usr/bin/env bash
# Fetches and builds the assets of vireo's VDUSE end-to-end tests into
# tests/e2e/assets/vduse/ (git-ignored), from Debian's archive and npm only:
#
#   vmlinuz       Debian trixie amd64 linux-image-6.12.*-amd64 (what linux-image-amd64 depends on)
#   base.cpio     the guest's userland, an uncompressed newc cpio (no gunzip under TCG):
#                   /bin/busybox                  trixie busybox-static
#                   /lib/modules/*.ko, order      vduse, vdpa, vhost_iotlb, virtio_vdpa,
#                                                 virtio_blk, virtio_net and their
#                                                 dependencies (from each module's modinfo),
#                                                 decompressed, in load order
#                   /usr/sbin/vdpa                trixie iproute2's vdpa tool
#                   /bin/deno                     npm @deno/linux-x64-glibc@2.9.6
#                   /usr/lib/x86_64-linux-gnu/*   the shared libraries both need, from
#                                                 trixie's libc6, libgcc-s1, libmnl0, libcap2
#                                                 (resolved by trixie's own ld.so --list)
#                   /etc/passwd, /etc/group       root only
#   MANIFEST      versions and checksums of all of the above
#
# The guest's /init, its test scripts and vireo's source are not in base.cpio:
# qemu.ts packs them into a small second cpio at every boot and boots the
# concatenation (the kernel unpacks concatenated archives in order).
#
# Also makes sure the host has qemu-system-x86_64: when it is missing, Debian's
# qemu-system-x86 is installed with the host's apt (needs root).
#
# Cached: when assets/vduse/MANIFEST was made from the same inputs (this script
# and the cpio writer ../make_initramfs.ts), nothing is
# fetched. Downloads are kept in assets/vduse/downloads/. Any failure stops the
# script with a non-zero status.
#
# apt runs with a private state directory (assets/vduse/.apt) and its own
# sources list naming trixie on the host's Debian mirror: the host's apt
# configuration and state are untouched (except for installing QEMU).
#
# Environment: DENO (a deno command; default `deno` on PATH, else `npx -y deno@2.9.6`),
# VIREO_VDUSE_ASSETS (another output directory; the tests read it too), VIREO_DEBIAN_MIRROR (default: the
# host's first Debian mirror, else http://deb.debian.org/debian), FORCE=1 (rebuild
# everything, downloads included).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${VIREO_VDUSE_ASSETS:-$(cd "$HERE/.." && pwd)/assets/vduse}"
DENO_VERSION="2.9.6"
SUITE="trixie"
# Wanted modules; their dependencies are added from modinfo.
MODULES=(vhost_iotlb vdpa vduse virtio_vdpa virtio_blk virtio_net)
# Debian packages that provide the shared libraries of deno and vdpa.
LIBDEBS=(libc6 libgcc-s1 libmnl0 libcap2)
START=$(date +%s.%N)

die() {
  echo "fetch_assets.sh (vduse): $*" >&2
  exit 1
}
log() { echo "== $*"; }

if [ -n "${DENO:-}" ]; then
  read -r -a DENO_CMD <<<"$DENO"
elif command -v deno >/dev/null 2>&1; then
  DENO_CMD=(deno)
else
  DENO_CMD=(npx -y "deno@$DENO_VERSION")
fi
for tool in npm apt-get apt-cache dpkg-deb sha256sum tar xz; do
  command -v "$tool" >/dev/null 2>&1 || die "needs '$tool' on PATH"
done

# ---- QEMU on the host -----------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "qemu-system-x86_64 is missing: install Debian's qemu-system-x86 (needs root)"
  log "apt-get install qemu-system-x86 (host)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 >/dev/null 2>&1; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq || die "apt-get update failed on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 >/dev/null || die "cannot install qemu-system-x86"
  fi
  command -v qemu-system-x86_64 >/dev/null 2>&1 ||
    die "qemu-system-x86 is installed but qemu-system-x86_64 is not on PATH"
fi

# ---- cache ----------------------------------------------------------------------
KEY=$(cat "$HERE/fetch_assets.sh" "$HERE/../make_initramfs.ts" |
  sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/MANIFEST" ] &&
  grep -qx "key $KEY" "$OUT/MANIFEST"; then
  for f in vmlinuz base.cpio; do
    [ -s "$OUT/$f" ] || die "$OUT/$f is missing although MANIFEST is current: rerun with FORCE=1"
  done
  echo "fetch_assets.sh (vduse): $OUT is up to date (key $KEY)"
  exit 0
fi
[ "${FORCE:-0}" = 1 ] && rm -rf "$OUT/downloads" "$OUT/.apt"
mkdir -p "$OUT/downloads"
rm -f "$OUT/MANIFEST"

# ---- apt, private state, trixie ---------------------------------------------------
MIRROR="${VIREO_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  # The host's first deb.debian.org-style mirror (deb822 or one-line format).
  MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE 's|^URIs: *(https?://[^ ]*/debian)/?( .*)?$|\1|p' | head -n 1 || true)
  [ -n "$MIRROR" ] || MIRROR=$(cat /etc/apt/sources.list 2>/dev/null |
    sed -nE 's|^deb +(\[[^]]*\] +)?(https?://[^ ]*/debian)/? .*$|\2|p' | head -n 1 || true)
  [ -n "$MIRROR" ] || MIRROR="http://deb.debian.org/debian"
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s "$KEYRING" ] || die "needs $KEYRING (Debian's debian-archive-keyring)"
APTDIR="$OUT/.apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/sources.list.d"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APTDIR/sources.list"
: >"$APTDIR/status"
APT_OPTS=(-o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
  -o "Dir::State::status=$APTDIR/status" -o "Dir::Etc::SourceList=$APTDIR/sources.list"
  -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d" -o "APT::Architectures::=amd64"
  -o "Debug::NoLocking=1")
# As root, apt would drop to _apt, which cannot write into the assets directory.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o "APT::Sandbox::User=root")
log "apt-get update (private state, $MIRROR $SUITE)"
apt-get -qq "${APT_OPTS[@]}" update >"$APTDIR/update.log" 2>&1 ||
  die "apt-get update of $SUITE failed (see $APTDIR/update.log)"

KPKG=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 2>/dev/null |
  sed -nE 's/^ *Depends: (linux-image-6\.12\.[^: ]*-amd64)(:amd64)?$/\1/p' | head -n 1)
[ -n "$KPKG" ] || die "cannot resolve $SUITE's linux-image-amd64 to a linux-image-6.12.*-amd64 package"
KVER=${KPKG#linux-image-}

fetch_deb() { # name -> path of the .deb in downloads/
  local name=$1 found
  found=$(ls "$OUT/downloads/${name}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$found" ]; then
    log "apt-get download $name ($SUITE)" >&2
    (cd "$OUT/downloads" && apt-get -qq "${APT_OPTS[@]}" download "$name" >&2) ||
      die "cannot download $name from $MIRROR $SUITE"
    found=$(ls "$OUT/downloads/${name}_"*.deb 2>/dev/null | head -n 1 || true)
  fi
  [ -n "$found" ] || die "apt-get download $name produced no .deb"
  echo "$found"
}
KDEB=$(fetch_deb "$KPKG")
BBDEB=$(fetch_deb busybox-static)
IPDEB=$(fetch_deb iproute2)
LIBDEB_FILES=()
for p in "${LIBDEBS[@]}"; do LIBDEB_FILES+=("$(fetch_deb "$p")"); done

# ---- deno from npm ----------------------------------------------------------------
DTGZ="$OUT/downloads/deno-linux-x64-glibc-$DENO_VERSION.tgz"
if [ ! -s "$DTGZ" ]; then
  log "npm pack @deno/linux-x64-glibc@$DENO_VERSION"
  (cd "$OUT/downloads" && npm pack --silent "@deno/linux-x64-glibc@$DENO_VERSION" >/dev/null) ||
    die "cannot fetch @deno/linux-x64-glibc@$DENO_VERSION from the npm registry"
fi
[ -s "$DTGZ" ] || die "npm pack did not produce $DTGZ"

# ---- the guest's root -------------------------------------------------------------
WORK="$OUT/.work"
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/iproute2" "$WORK/libs" "$WORK/deno"
log "extracting $(basename "$KDEB"), busybox, iproute2, ${LIBDEBS[*]}, deno"
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"
dpkg-deb -x "$IPDEB" "$WORK/iproute2"
for f in "${LIBDEB_FILES[@]}"; do dpkg-deb -x "$f" "$WORK/libs"; done
tar -xzf "$DTGZ" -C "$WORK/deno" package/deno || die "$DTGZ has no package/deno"

cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz" || die "$KPKG has no /boot/vmlinuz-$KVER"

ROOT="$WORK/root"
LIBDIR="usr/lib/x86_64-linux-gnu"
mkdir -p "$ROOT/bin" "$ROOT/usr/sbin" "$ROOT/$LIBDIR" "$ROOT/lib64" "$ROOT/lib/modules" \
  "$ROOT/etc" "$ROOT/dev" "$ROOT/proc" "$ROOT/sys" "$ROOT/tmp" "$ROOT/run" "$ROOT/root"
BB=$(find "$WORK/busybox" -path '*bin/busybox' -type f | head -n 1)
[ -n "$BB" ] || die "busybox-static has no busybox binary"
cp "$BB" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
VDPA=$(find "$WORK/iproute2" -name vdpa -type f | head -n 1)
[ -n "$VDPA" ] || die "iproute2 has no vdpa binary"
cp "$VDPA" "$ROOT/usr/sbin/vdpa"
cp "$WORK/deno/package/deno" "$ROOT/bin/deno"
chmod 755 "$ROOT/bin/deno" "$ROOT/usr/sbin/vdpa" "$ROOT/bin/busybox"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"

# Shared libraries: what trixie's own loader resolves for deno and vdpa, from the
# extracted debs only. Anything "not found" stops the build.
LDSO="$WORK/libs/$LIBDIR/ld-linux-x86-64.so.2"
[ -x "$LDSO" ] || die "libc6 has no $LIBDIR/ld-linux-x86-64.so.2"
cp -L "$LDSO" "$ROOT/$LIBDIR/ld-linux-x86-64.so.2"
ln -s "../$LIBDIR/ld-linux-x86-64.so.2" "$ROOT/lib64/ld-linux-x86-64.so.2"
for bin in "$ROOT/bin/deno" "$ROOT/usr/sbin/vdpa"; do
  listing=$("$LDSO" --library-path "$WORK/libs/$LIBDIR" --list "$bin") ||
    die "ld.so --list $bin failed: $listing"
  if grep -q "not found" <<<"$listing"; then
    die "$(basename "$bin") needs libraries that ${LIBDEBS[*]} lack:
$(grep "not found" <<<"$listing")"
  fi
  while read -r soname path; do
    case "$soname" in */*) continue ;; esac # the loader itself, copied above
    [ -e "$ROOT/$LIBDIR/$soname" ] || cp -L "$path" "$ROOT/$LIBDIR/$soname" ||
      die "cannot copy $path"
  done < <(sed -nE 's/^\s*(\S+) => (\S+) \(0x[0-9a-f]+\)$/\1 \2/p' <<<"$listing")
done
# Debian's ld.so searches /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu.
ln -s "../$LIBDIR" "$ROOT/lib/x86_64-linux-gnu"

# Modules: the wanted ones and their dependencies (modinfo "depends="), in load order.
MODDIR=$(find "$WORK/kernel" -type d -path "*/lib/modules/$KVER" | head -n 1)
[ -n "$MODDIR" ] || die "$KPKG has no lib/modules/$KVER"
ORDER=()
declare -A SEEN=()
add_module() { # name: appends its dependencies, then itself, to ORDER
  local m=$1 ko deps d
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  if grep -qE "/$m\.ko(\.xz)?$" "$MODDIR/modules.builtin" 2>/dev/null; then
    return 0 # built into the kernel
  fi
  ko=$(find "$MODDIR" \( -name "$m.ko" -o -name "$m.ko.xz" \) | head -n 1)
  [ -n "$ko" ] || die "$KPKG has no module $m"
  case "$ko" in
    *.xz) xz -dc "$ko" >"$ROOT/lib/modules/$m.ko" || die "cannot decompress $ko" ;;
    *) cp "$ko" "$ROOT/lib/modules/$m.ko" ;;
  esac
  deps=$(tr '\0' '\n' <"$ROOT/lib/modules/$m.ko" | sed -n 's/^depends=//p' | head -n 1)
  for d in ${deps//,/ }; do add_module "$d"; done
  ORDER+=("$m")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${ORDER[@]}" >"$ROOT/lib/modules/order"

# When root and chroot work, prove the binaries start with the packed libraries.
if [ "$(id -u)" = 0 ] && chroot "$ROOT" /bin/busybox true 2>/dev/null; then
  chroot "$ROOT" /bin/deno --version >/dev/null || die "deno does not start in the guest root"
  chroot "$ROOT" /usr/sbin/vdpa -V >/dev/null || die "vdpa does not start in the guest root"
fi

log "packing base.cpio"
"${DENO_CMD[@]}" run --quiet --allow-read --allow-write "$HERE/../make_initramfs.ts" \
  "$ROOT" "$OUT/base.cpio" || die "cannot pack base.cpio"
DENO_BIN_SHA=$(sha256sum "$ROOT/bin/deno" | cut -c1-16)
rm -rf "$WORK"

# ---- manifest -------------------------------------------------------------------
{
  echo "key $KEY"
  echo "mirror $MIRROR $SUITE"
  echo "kernel $(basename "$KDEB")"
  echo "kver $KVER"
  echo "busybox $(basename "$BBDEB")"
  echo "iproute2 $(basename "$IPDEB")"
  for f in "${LIBDEB_FILES[@]}"; do echo "lib $(basename "$f")"; done
  echo "deno @deno/linux-x64-glibc@$DENO_VERSION $DENO_BIN_SHA"
  echo "modules ${ORDER[*]}"
  (cd "$OUT" && sha256sum vmlinuz base.cpio)
} >"$OUT/MANIFEST.tmp"
mv "$OUT/MANIFEST.tmp" "$OUT/MANIFEST"
END=$(date +%s.%N)
printf 'fetch_assets.sh (vduse): assets ready in %s (%.1f s)\n' "$OUT" \
  "$(awk "BEGIN{print $END - $START}")"
