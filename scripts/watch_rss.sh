#!/bin/bash
# Log the resident memory (GB) of every `texlens train` process (training, data workers) once a minute:
#   nohup scripts/watch_rss.sh > rss.log &      (docs/RESULTS.md, "Training memory")
while true; do
  line="$(date +%H:%M)"
  for p in $(pgrep -f "bin/texlens train"); do
    r=$(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null)
    [ -n "$r" ] && line="$line $p:$(awk -v r=$r 'BEGIN{printf "%.2f", r/1048576}')"
  done
  echo "$line"
  sleep 60
done
