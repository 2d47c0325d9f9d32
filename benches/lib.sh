# Helpers shared by the benchmark scripts (sourced, not run). The caller has cd'ed to
# the repository root.

# Build the given cargo arguments (`-p PKG ...` or `--workspace`) in $PROFILE
# (`release`, the default, or `debug`, cargo's dev profile) and the test guest.
# BUILD=0 uses the binaries already in target/$PROFILE.
bench_build() {
  PROFILE=${PROFILE:-release}
  [ "${BUILD:-1}" = 0 ] && return 0
  case "$PROFILE" in
    release) cargo build --release "$@" >&2 ;;
    debug) cargo build "$@" >&2 ;;
    *) echo "PROFILE=$PROFILE: want release or debug" >&2; return 1 ;;
  esac
  bash tests/guest/build.sh >&2
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# The median of the numbers on stdin, one a line ("-" when there are none).
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }

# "P50 P95 max" of the numbers on stdin (nearest rank), "- - -" when there are none.
p50_p95_max() {
  sort -n | awk '{a[NR]=$1} END {
    if (NR==0) {print "- - -"; exit}
    r50=int(NR*0.50+0.999999); r95=int(NR*0.95+0.999999)
    print a[r50], a[r95], a[NR]}'
}

# The load average over the last minute, 5 and 15 minutes: "1.23 1.10 0.98".
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
