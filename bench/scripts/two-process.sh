#!/usr/bin/env bash
# The pair as a plant runs it: release `weir-rx run` and `weir-tx send` as
# two processes, outbox, gap ledger, session book and file output on the
# disk of WORK (default /var/tmp/weir-two-process), a real Mosquitto, one
# 256 MiB random file over loopback at rate_mbps = 1000.
#   bench/scripts/two-process.sh plain|hog|kill
# hog: stress-ng --cpu 2 beside both; kill: weir-rx killed 1 s in and
# started again 3 s later, then a second, small push (its heartbeats say
# how the first ended, so the receiver counts what it missed). Needs a
# release build
# (cargo build --release -p weir-tx -p weir-rx), mosquitto, stress-ng.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
B=$root/target/release
W=${WORK:-/var/tmp/weir-two-process}
mode=${1:-plain}
mkdir -p "$W" && cd "$W"
[ -f k.key ] || { printf 'weir-psk v1\nid = 1\nkey = %s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > k.key; chmod 600 k.key; }
[ -f big.bin ] || head -c 268435456 /dev/urandom > big.bin
sed -e 's|destination = "192.0.2.10:47000"|destination = "127.0.0.1:47999"|' \
    -e 's|rate_mbps = 100.0|rate_mbps = 1000.0|' -e "s|\"weir-1.key\"|\"$W/k.key\"|" \
    -e "s|/var/lib/weir/|$W/state/|" "$root/systemd/weir-tx.toml" | sed '/^\[\[spool\]\]/,$d' > tx.toml
{ sed -e 's|listen = "0.0.0.0:47000"|listen = "127.0.0.1:47999"|' -e "s|\"weir-1.key\"|\"$W/k.key\"|" \
    -e "s|/var/lib/weir/|$W/state/|" -e 's|^port = 1883|port = 18839|' "$root/systemd/weir-rx.toml"
  printf '\n[files]\noutput_dir = "%s/out"\n' "$W"; } > rx.toml
pgrep -f "mosquitto -p 18839" >/dev/null || { mosquitto -p 18839 > mosq.log 2>&1 & sleep 0.5; }
rm -rf state out; mkdir -p state out
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
"$B/weir-rx" run --config rx.toml 2> rx.log & RX=$!
sleep 1
HOG=
[ "$mode" = hog ] && { stress-ng --cpu 2 --timeout 120s --quiet & HOG=$!; }
rx0=$(cpu $RX); t0=$(date +%s.%N)
/usr/bin/time -f "tx_cpu_s user %U sys %S" "$B/weir-tx" send --quiet --config tx.toml big.bin > tx.out 2> tx.time &
TX=$!
if [ "$mode" = kill ]; then
  sleep 1; kill -9 $RX; sleep 3
  "$B/weir-rx" run --config rx.toml 2> rx2.log & RX=$!
  rx0=$(cpu $RX)
fi
wait $TX
if [ "$mode" = kill ]; then
  head -c 1048576 /dev/urandom > small.bin
  "$B/weir-tx" send --quiet --config tx.toml small.bin > tx2.out 2>&1
fi
for _ in $(seq 1 600); do [ -f out/big.bin ] || [ "$mode" = kill ] && break; sleep 0.1; done
t1=$(date +%s.%N); rx1=$(cpu $RX)
sleep 12   # past gap_timeout
kill -TERM $RX; wait $RX 2>/dev/null
[ -n "$HOG" ] && kill $HOG 2>/dev/null
el=$(echo "$t1 - $t0" | bc)
echo "mode=$mode elapsed_s=$el $(tail -1 tx.time) rx_cpu_ticks=$((rx1 - rx0))"
if cmp -s big.bin out/big.bin; then echo "file identical; goodput_mbit=$(echo "268435456*8/$el/1000000" | bc)"; else echo "file NOT delivered"; fi
"$B/weir-rx" gaps --config rx.toml 2>/dev/null | tail -1
