# virtio-blk served by vireo's VDUSE daemon (examples/vduse_host.ts, or $DAEMON),
# bound by the guest kernel's virtio_blk through virtio_vdpa. The host put a
# patterned image at /data/pattern.img and a second pattern at /data/write.bin.
. ./lib.sh

DAEMON=${DAEMON:-/vireo/examples/vduse_host.ts}
NAME=vireo-blk
REF=/data/pattern.img
NEW=/data/write.bin
IMG=/tmp/disk.img
LOG=/tmp/daemon.log

cp "$REF" "$IMG"
bytes=$(stat -c %s "$IMG")
newbytes=$(stat -c %s "$NEW")
t0=$(now_ms)
$DENO_RUN "$DAEMON" --blk "$IMG" --name "$NAME" >"$LOG" 2>&1 &
pid=$!
if wait_for "$LOG" "created /dev/vduse/$NAME" 60 "$pid"; then
  ok daemon-created "$(($(now_ms) - t0)) ms"
else
  fail daemon-created "daemon did not create /dev/vduse/$NAME"
  show "$LOG" daemon
  finish
fi
[ -c "/dev/vduse/$NAME" ] && ok dev-node || fail dev-node "no /dev/vduse/$NAME"

# Attach it as the administrator would; the daemon answers the kernel meanwhile.
t1=$(now_ms)
check vdpa-dev-add vdpa dev add name "$NAME" mgmtdev vduse
vdpa dev show "$NAME" 2>&1 | sed 's/^/  vdpa: /'
dev=
deadline=$(($(now_ms) + 30000))
while [ -z "$dev" ] && [ "$(now_ms)" -lt "$deadline" ]; do
  dev=$(ls /sys/bus/vdpa/devices/$NAME/virtio*/block/ 2>/dev/null | head -n 1)
  [ -n "$dev" ] || usleep 50000
done
if [ -n "$dev" ] && [ -b "/dev/$dev" ]; then
  ok blockdev "/dev/$dev after $(($(now_ms) - t1)) ms"
else
  fail blockdev "no block device under /sys/bus/vdpa/devices/$NAME"
  show "$LOG" daemon
  finish
fi
wait_for "$LOG" "driver ok" 10 "$pid" && ok driver-ok || fail driver-ok "daemon did not report DRIVER_OK"
D=/dev/$dev
vdev=$(basename "$(readlink -f /sys/bus/vdpa/devices/$NAME/virtio*)")
echo "@@vireo info driver $(basename "$(readlink /sys/bus/virtio/devices/$vdev/driver)") $vdev $D"
echo "@@vireo info features $(cat /sys/bus/virtio/devices/$vdev/features)"
echo "@@vireo info write_cache $(cat /sys/block/$dev/queue/write_cache)"
echo "@@vireo info serial $(cat /sys/block/$dev/serial 2>/dev/null)"

size=$(($(cat /sys/block/$dev/size) * 512))
[ "$size" = "$bytes" ] && ok size "$size bytes" || fail size "device $size bytes, image $bytes"

# Known sectors, from the device: each one a single O_DIRECT read request of
# 4 KiB starting at that sector (busybox dd drops O_DIRECT when its buffer is
# smaller than a page: bs=4096 keeps it), caches dropped first.
sync
echo 3 >/proc/sys/vm/drop_caches
last=$((bytes / 512 - 8))
bad=
for s in 0 1 2 7 8 63 64 4095 4096 $((last / 2 + 3)) $((last - 1)) $last; do
  a=$(dd if="$D" bs=4096 skip=$((s * 512)) count=1 iflag=direct,skip_bytes 2>/dev/null | sha)
  b=$(dd if="$REF" bs=4096 skip=$((s * 512)) count=1 iflag=skip_bytes 2>/dev/null | sha)
  [ "$a" = "$b" ] || bad="$bad $s"
done
[ -z "$bad" ] && ok read-sectors || fail read-sectors "mismatch at sectors$bad"

# The whole device, and the read rate.
echo 3 >/proc/sys/vm/drop_caches
m0=$(now_ms)
dsum=$(dd if="$D" bs=1M iflag=direct 2>/dev/null | sha)
m1=$(now_ms)
rsum=$(sha <"$REF")
echo "@@vireo info read-rate $(rate "$bytes" $((m1 - m0))) MiB/s ($bytes bytes, 1 MiB O_DIRECT reads + sha256)"
m0=$(now_ms)
dd if="$D" of=/dev/null bs=1M iflag=direct 2>/dev/null
m1=$(now_ms)
echo "@@vireo info read-rate-raw $(rate "$bytes" $((m1 - m0))) MiB/s"
echo "@@vireo info device-sha256 $dsum"
[ "$dsum" = "$rsum" ] && ok device-sha "$dsum" || fail device-sha "device $dsum, pattern $rsum"

# Writes: a second pattern at 4 MiB with O_DIRECT, then fsync (FLUSH).
m0=$(now_ms)
dd if="$NEW" of="$D" bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null
wst=$?
m1=$(now_ms)
echo "@@vireo info write-rate $(rate "$newbytes" $((m1 - m0))) MiB/s ($newbytes bytes, 1 MiB O_DIRECT writes + fsync)"
[ "$wst" = 0 ] && ok write || fail write "dd exited $wst"
# And a sector through the page cache, written back and flushed by fsync of the device.
printf 'vireo: written by the Linux guest through VDUSE' |
  dd of="$D" bs=512 seek=100 count=1 conv=sync 2>/dev/null
check sync-device sync "$D"
echo 3 >/proc/sys/vm/drop_caches
nsum=$(sha <"$NEW")
a=$(dd if="$D" bs=1M skip=4 count=$((newbytes / 1048576)) iflag=direct 2>/dev/null | sha)
[ "$a" = "$nsum" ] && ok write-readback || fail write-readback "device $a, written $nsum"
# What the daemon stored in the image file.
f=$(dd if="$IMG" bs=1M skip=4 count=$((newbytes / 1048576)) 2>/dev/null | sha)
[ "$f" = "$nsum" ] && ok write-file || fail write-file "image $f, written $nsum"
text=$(dd if="$IMG" bs=512 skip=100 count=1 2>/dev/null | tr -d '\0')
[ "$text" = "vireo: written by the Linux guest through VDUSE" ] && ok write-sector-file ||
  fail write-sector-file "image sector 100: $text"
# Whole device against the whole image file.
echo 3 >/proc/sys/vm/drop_caches
dsum=$(dd if="$D" bs=1M iflag=direct 2>/dev/null | sha)
fsum=$(sha <"$IMG")
echo "@@vireo info final-sha256 $fsum"
[ "$dsum" = "$fsum" ] && ok device-equals-file || fail device-equals-file "device $dsum, image $fsum"

# Detach and stop the daemon; its counters must show the flushes.
check vdpa-dev-del vdpa dev del "$NAME"
kill -TERM "$pid"
wait "$pid"
st=$?
show "$LOG" daemon
[ "$st" = 0 ] && ok daemon-exit || fail daemon-exit "status $st"
flushes=$(sed -n 's/.* \([0-9][0-9]*\) flushes.*/\1/p' "$LOG")
# One from dd's fsync, one from sync(1) of the device.
[ "${flushes:-0}" -ge 2 ] && ok flushes "$flushes" || fail flushes "daemon counted ${flushes:-no} flushes, expected 2 or more"
errors=$(sed -n 's/.* \([0-9][0-9]*\) I\/O errors.*/\1/p' "$LOG")
[ "${errors:-1}" = 0 ] && ok no-io-errors || fail no-io-errors "daemon counted ${errors:-?} I/O errors"
[ -e "/dev/vduse/$NAME" ] && fail destroyed "/dev/vduse/$NAME still exists" || ok destroyed
finish
