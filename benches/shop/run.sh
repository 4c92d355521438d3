#!/usr/bin/env bash
# The tutorials' scenario: the shop under 400 concurrent clients doing the read mix of
# benches/shop/mix.lua (product pages, lists, categories, top-selling), 5 s warm-up, 20 s
# measured. Usage: benches/shop/run.sh LABEL [shop flags…], e.g.
#   benches/shop/run.sh cached
#   benches/shop/run.sh nocache --no-cache --no-stampede
# Needs wrk and a release build of the shop (SHOP=path, default target/release/shop).
set -e
cd "$(dirname "$0")"
SHOP=${SHOP:-../../target/release/shop}
OUT=${OUT:-/tmp/turret-shop-bench}
mkdir -p "$OUT"
label=$1; shift
db=$OUT/shop-$label.db; rm -f $db*
$SHOP --listen 127.0.0.1:3999 --database-url sqlite://$db --no-rate-limit "$@" > $OUT/$label.out 2>$OUT/$label.err &
pid=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:3999/health >/dev/null && break; sleep 0.2; done
wrk -t1 -c400 -d5s -s mix.lua http://127.0.0.1:3999 >/dev/null   # warm-up
q0=$(curl -s http://127.0.0.1:3999/metrics | awk '/^shop_db_queries_total/ {s+=$2} END {print s}')
wrk -t1 -c400 -d20s --latency -s mix.lua http://127.0.0.1:3999 > $OUT/$label.wrk
q1=$(curl -s http://127.0.0.1:3999/metrics | awk '/^shop_db_queries_total/ {s+=$2} END {print s}')
hits=$(curl -s http://127.0.0.1:3999/metrics | grep '^turret_cache_requests_total' || true)
kill $pid; wait $pid 2>/dev/null || true
echo "== $label: db queries during 20 s: $((q1 - q0)) ($(( (q1 - q0) / 20 ))/s)"
grep -E "Requests\/sec|^p[0-9]|non2xx|Socket" $OUT/$label.wrk
echo "$hits" | head -20
