# Helpers shared by the guest test scripts (sourced; busybox sh).
# Results go to the serial console as "@@vireo ok NAME ..." / "@@vireo fail NAME ...";
# `finish` exits non-zero when any check failed.
FAILS=0

ok() {
  name=$1
  shift
  echo "@@vireo ok $name $*"
}

fail() {
  name=$1
  shift
  echo "@@vireo fail $name $*"
  FAILS=$((FAILS + 1))
}

# check NAME COMMAND...: runs the command, ok when it succeeds.
check() {
  name=$1
  shift
  if out=$("$@" 2>&1); then
    ok "$name"
  else
    fail "$name" "$(echo "$out" | tail -n 3 | tr '\n' '|')"
  fi
}

# Milliseconds since boot.
now_ms() {
  awk '{ printf "%d", $1 * 1000 }' /proc/uptime
}

# rate BYTES MILLISECONDS -> MiB/s as "12.34" (/proc/uptime has 10 ms steps:
# measure transfers that take well over that).
rate() {
  awk -v b="$1" -v ms="$2" 'BEGIN { if (ms < 10) ms = 10; printf "%.2f", b / 1048576 / (ms / 1000) }'
}

sha() {
  sha256sum | cut -d' ' -f1
}

finish() {
  if [ "$FAILS" != 0 ]; then
    echo "@@vireo dmesg-begin"
    dmesg | tail -n 40
    echo "@@vireo dmesg-end"
    exit 1
  fi
  exit 0
}

# The daemon runs from vireo's source with no config, lock file or network.
DENO_RUN="deno run --no-config --no-lock -A"

# wait_for FILE TEXT SECONDS [PID]: waits until FILE contains TEXT; fails early
# when PID (the process writing FILE) is gone.
wait_for() {
  deadline=$(($(now_ms) + $3 * 1000))
  while ! grep -qF "$2" "$1" 2>/dev/null; do
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then return 1; fi
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    usleep 50000
  done
}

# show FILE PREFIX: copies a log to the console, each line prefixed.
show() {
  sed "s/^/  $2: /" "$1"
}
