# Baked guest script (boot with vireo.run=probe): what the guest found, then power off.
for d in /sys/bus/pci/devices/*; do
  echo "@@vireo pci ${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(basename "$(readlink "$d/driver")" 2>/dev/null)"
done
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] && echo "@@vireo virtio ${d##*/} $(cat "$d/device") $(basename "$(readlink "$d/driver")")"
done
[ -e /dev/vda ] && echo "@@vireo vda $(cat /sys/block/vda/size) sectors"
true
