# The guest's toolchain: VDUSE's control node, the vdpa tool and Deno (with
# vireo's VDUSE modules loading offline).
. ./lib.sh

if [ -c /dev/vduse/control ]; then ok control-node; else fail control-node "no /dev/vduse/control"; fi
out=$(vdpa mgmtdev show 2>&1)
echo "$out" | sed 's/^/  vdpa: /'
case "$out" in
  *vduse*) ok vdpa-mgmtdev ;;
  *) fail vdpa-mgmtdev "$out" ;;
esac
t0=$(now_ms)
out=$(deno eval 'console.log(6 * 7)' 2>&1)
t1=$(now_ms)
if [ "$out" = 42 ]; then ok deno-eval "$((t1 - t0)) ms"; else fail deno-eval "$out"; fi
t0=$(now_ms)
out=$(deno eval --no-config --no-lock \
  'const m = await import("/vireo/transports/vduse/mod.ts"); console.log(typeof m.VduseDaemon)' 2>&1)
t1=$(now_ms)
if [ "$out" = function ]; then ok vireo-import "$((t1 - t0)) ms"; else fail vireo-import "$out"; fi
finish
