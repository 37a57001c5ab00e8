# The negative control: the same blk test against a daemon whose disk flips a
# bit in every read (corrupting_daemon.ts). The pattern checks must fail.
DAEMON=/vireo/tests/e2e/vduse/guest/corrupting_daemon.ts
. ./blk.sh
