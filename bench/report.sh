#!/usr/bin/env bash
# bench/report.sh — the tables of a bench/run: printed, and with WRITE_DOCS=1
# written between the markers of docs/PERFORMANCE.md, with docs/performance.png.
#
# Usage: bench/report.sh OUT_DIR REQUESTS REPEAT STORM_REQUESTS WRK_SECONDS WRITE_DOCS SMOKE
# OUT_DIR holds load.tsv, instructions.tsv, storm.tsv and compile.tsv (bench/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=$1 requests=$2 repeat=$3 storm_requests=$4 wrk_seconds=$5 write_docs=$6 smoke=$7
load="$out/load.tsv" instructions="$out/instructions.tsv" storm="$out/storm.tsv" compile="$out/compile.tsv"

# The value of column $3 for client $1 at concurrency $2 of load.tsv.
figure() { awk -F'\t' -v c="$1" -v k="$2" -v col="$3" 'NR > 1 && $1 == c && $2 == k { print $col }' "$load"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
concurrencies=$(awk -F'\t' 'NR > 1 { print $2 }' "$load" | sort -n -u | tr '\n' ' ')

# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
markdown() {
  local gpp clangv
  gpp=$(g++ --version | head -n 1)
  clangv=$(clang++-14 --version 2>/dev/null | head -n 1 || echo "not installed")
  echo "Measured $(date -u +%Y-%m-%d) with \`bash bench/run\`: $requests GETs per client and concurrency (wrk: ${wrk_seconds} s),"
  echo "the fastest of $repeat runs each; a $storm_requests-request refresh storm. Every figure below comes from this one run"
  echo "on one machine."
  echo
  echo "**Machine**: $(lscpu | awk -F': *' '/^Model name/ { print $2 }'), $(nproc) cores,"
  echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")."
  echo "nginx runs one worker; each client runs alone against it, as one process (confluence_oauth-2t: two threads;"
  echo "confluence_oauth-json: \`get_json\`, which parses each body, instead of \`request\`)."
  echo
  echo "**Versions**: confluence_oauth $(sed -n 's/^#define CONFLUENCE_OAUTH_VERSION "\([^"]*\)".*/\1/p' confluence_oauth.hpp);"
  echo "$gpp; $clangv; nginx $(nginx -v 2>&1 | sed 's|.*/||'); wrk $(dpkg-query -W -f='${Version}' wrk);"
  echo "libcurl $(curl-config --version | sed 's/libcurl //'); cpprestsdk $(dpkg-query -W -f='${Version}' libcpprest-dev);"
  echo "Node.js $(node --version), axios $(jq -r '.packages["node_modules/axios"].version' bench/clients/node/package-lock.json);"
  echo "$(PATH="$PATH:/usr/local/go/bin" go version | sed 's/ linux.*//'), golang.org/x/oauth2 $(awk '/golang.org\/x\/oauth2 v/ { print $NF }' bench/clients/go/go.mod);"
  echo "OpenSSL $(openssl version | awk '{ print $2 }'), Asio $(dpkg-query -W -f='${Version}' libasio-dev), nlohmann/json $(dpkg-query -W -f='${Version}' nlohmann-json3-dev)."
  echo
  echo "### Headline"
  echo
  echo "| concurrency | throughput vs libcurl | CPU per request vs libcurl | throughput vs Node/axios | vs wrk | get_json vs request |"
  echo "|---|---|---|---|---|---|"
  local c
  for c in $concurrencies; do
    echo "| $c | $(ratio "$(figure confluence_oauth "$c" 6)" "$(figure libcurl "$c" 6)")× |" \
      "$(ratio "$(figure confluence_oauth "$c" 9)" "$(figure libcurl "$c" 9)")× |" \
      "$(ratio "$(figure confluence_oauth "$c" 6)" "$(figure node-axios "$c" 6)")× |" \
      "$(ratio "$(figure confluence_oauth "$c" 6)" "$(figure wrk "$c" 6)")× |" \
      "$(ratio "$(figure confluence_oauth-json "$c" 6)" "$(figure confluence_oauth "$c" 6)")× |"
  done
  echo
  echo "confluence_oauth on one thread. Peak memory at the highest concurrency:"
  local top
  top=$(awk '{ print $NF }' <<<"$concurrencies")
  echo "$(figure confluence_oauth "$top" 10) MiB against libcurl's $(figure libcurl "$top" 10) MiB" \
    "($(ratio "$(figure confluence_oauth "$top" 10)" "$(figure libcurl "$top" 10)")×), Go's $(figure go-oauth2 "$top" 10) MiB" \
    "and Node/axios's $(figure node-axios "$top" 10) MiB ($(ratio "$(figure confluence_oauth "$top" 10)" "$(figure node-axios "$top" 10)")×)."
  echo
  echo "### Load"
  echo
  echo "| client | concurrency | req/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB | TLS handshakes / 10k req |"
  echo "|---|---|---|---|---|---|---|---|"
  awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $6, $7, $8, $9, $10, $11 }' "$load"
  echo
  echo "wrk does not verify the certificate and keeps no OAuth state: it is the ceiling of this nginx, not a client."
  if (( $(wc -l <"$instructions") > 1 )); then
    echo
    echo "### Instructions per request"
    echo
    echo "callgrind, concurrency 16: (instructions of a long run − of a short one) / the requests between them, so"
    echo "start-up and the handshakes of the first connections cancel. cpprestsdk opens connections beyond the 16 as it"
    echo "goes, each loading the system trust store; those stay in its figure."
    echo
    echo "| client | instructions / request | runs |"
    echo "|---|---|---|"
    awk -F'\t' 'NR > 1 { printf "| %s | %d | %d − %d requests |\n", $1, $2, $4, $3 }' "$instructions"
  fi
  echo
  echo "### Refresh storm"
  echo
  echo "$storm_requests requests at once, all holding an expired access token, against the fake Atlassian server (TLS, loopback)."
  echo "Token requests, connections and resumed TLS sessions are counted by the server."
  echo
  echo "| client | failed requests | seconds until all completed | token requests | granted | refused | connections | TLS resumptions |"
  echo "|---|---|---|---|---|---|---|---|"
  awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $3, $4, $5, $6, $7, $8, $9 }' "$storm"
  echo
  echo "### Many hosts: PostgreSQL"
  echo
  echo "The storm across processes that share the grant in PostgreSQL (\`postgres_token_store\`, a local PostgreSQL 15"
  echo "on a Unix socket), each with $storm_requests waiting requests; docs/MULTI_HOST.md."
  echo
  echo "| processes | requests each | failed requests | seconds until all completed | token requests | granted | refused |"
  echo "|---|---|---|---|---|---|---|"
  awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$out/postgres.tsv"
  echo
  jq -r '"Refreshes one after the other (\(.refreshes)): \(.refresh_ms_memory * 100 | round / 100) ms each with a memory store, \(.refresh_ms_postgres * 100 | round / 100) ms with PostgreSQL (lock, read, read and conditional update, unlock). `token()` with a valid cached token: \(.token_ns_memory | round) ns with a memory store, \(.token_ns_postgres | round) ns with PostgreSQL: it does not touch the database."' "$out/pg-cost.json"
  if (( $(wc -l <"$compile") > 1 )); then
    echo
    echo "### Compile cost"
    echo
    echo "\`examples/quickstart.cpp\` (the README's example: includes \`confluence_oauth.hpp\` and runs the whole flow),"
    echo "header-only and with \`CONFLUENCE_OAUTH_SEPARATE_COMPILATION\`, against \`bench/compile/deps_only.cpp\` (the same"
    echo "work by hand on Asio, Asio SSL and nlohmann/json), and the implementation file a separate build compiles once"
    echo "(\`src/confluence_oauth.cpp\`); \`-std=c++20 -c\`, bench/compile/run.sh."
    echo
    echo "| compiler | flags | dependencies only: s, MiB | header-only: s, MiB (overhead) | separate: s, MiB (overhead) | implementation, once: s, MiB |"
    echo "|---|---|---|---|---|---|"
    awk -F'\t' 'NR > 1 { key = $1 " " $2; if (!(key in seen)) { seen[key] = 1; order[++n] = key; cc[key] = $1; fl[key] = $2 } s[key, $3] = $4; m[key, $3] = $5 }
      function cell(k, f, base) { return sprintf("%.1f, %d (%+.0f%%, %+.0f%%)", s[k, f], m[k, f], (s[k, f] / s[k, base] - 1) * 100, (m[k, f] / m[k, base] - 1) * 100) }
      END { for (i = 1; i <= n; ++i) { k = order[i]; printf "| %s | %s | %.1f, %d | %s | %s | %.1f, %d |\n", cc[k], fl[k], s[k, "deps_only.cpp"], m[k, "deps_only.cpp"], cell(k, "quickstart.cpp", "deps_only.cpp"), cell(k, "quickstart.cpp (separate)", "deps_only.cpp"), s[k, "implementation"], m[k, "implementation"] } }' "$compile"
  fi
  echo
  echo "![Throughput and CPU per request by client and concurrency](performance.png)"
}

# ---------------------------------------------------------------------------
# Chart: throughput and CPU per 10,000 requests, clustered by concurrency
# ---------------------------------------------------------------------------
chart() {
  local png=$1 clients
  clients=$(awk -F'\t' 'NR > 1 && !seen[$1]++ { print $1 }' "$load" | tr '\n' ' ')
  for column in 6 9; do
    {
      printf 'concurrency'
      for c in $clients; do printf '\t%s' "$c"; done
      printf '\n'
      for k in $concurrencies; do
        printf '%s' "$k"
        for c in $clients; do printf '\t%s' "$(figure "$c" "$k" "$column")"; done
        printf '\n'
      done
    } >"$out/chart-$column.dat"
  done
  local n
  n=$(wc -w <<<"$clients")
  gnuplot <<EOF
set terminal pngcairo size 1200,900 font "sans,11" noenhanced
set output "$png"
set multiplot layout 2,1 title "confluence_oauth and the alternatives: HTTPS GETs over keep-alive on loopback"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key outside right top
set grid ytics
set xlabel "concurrency"
set ylabel "requests per second (higher is better)"
plot for [i=2:$((n + 1))] "$out/chart-6.dat" using i:xtic(1) title columnheader
set ylabel "client CPU seconds per 10,000 requests (lower is better)"
plot for [i=2:$((n + 1))] "$out/chart-9.dat" using i:xtic(1) title columnheader
unset multiplot
EOF
}

markdown >"$out/report.md"
echo
cat "$out/report.md"
if (( write_docs )); then
  chart docs/performance.png
  doc=docs/PERFORMANCE.md begin='<!-- bench/run: begin -->' end='<!-- bench/run: end -->'
  [[ -f "$doc" ]] || printf '# Performance\n\n%s\n%s\n' "$begin" "$end" >"$doc"
  awk -v begin="$begin" -v end="$end" -v report="$out/report.md" '
    $0 == begin { print; while ((getline line < report) > 0) print line; skipping = 1; next }
    $0 == end { skipping = 0 }
    !skipping { print }' "$doc" >"$doc.new"
  mv "$doc.new" "$doc"
  echo
  echo "bench/run: wrote $doc and docs/performance.png"
elif (( smoke )); then
  chart "$out/performance.png"
  echo
  echo "bench/run: smoke passed (every client ran; report and chart in $out)"
fi
