#!/usr/bin/env bash
# Disaster-recovery drill on a three-region demo on this machine:
#   1. starts `tickmesh demo` (synthetic feeds) and backs up the victim region every
#      BACKUP_EVERY seconds with `tickmesh backup` (incremental after the first run)
#   2. SIGKILLs the victim region and wipes its state (journal and audit log)
#   3. recovers it, restarts the region with its own node.toml, and waits for /readyz.
#      MODE=plan (default): `tickmesh recover plan --from OWN_BACKUP --from PEER_BACKUP`
#      then `recover apply`: a peer region's backup (taken after the kill) holds the
#      victim's home sources as replicated, so each source comes from whichever holds it
#      furthest. MODE=restore: `tickmesh restore` from the victim's own backup only.
#   4. reports, as one JSON line on standard output:
#      backup_lag_records / backup_lag_ms: the victim's home-source records the peers hold
#        that the restore alone lacks, and their span in ts_ingest;
#      rpo_records / rpo_ms: what is lost in the end: records the peers held at the kill
#        that the restarted region still lacks once ready (holes, or a last seq short of
#        the peers'); rpo_ms is then the backup's lag (0 when nothing is lost);
#      rto_ms: from the start of the restore to /readyz answering 200 (rto_from_kill_ms
#        adds the time between the kill and the start of the restore);
#      next_seq_ok: the restarted region continued its home source after the restored seq;
#      seqs_reused: seqs under which the restarted region's journal and the peer's hold
#        different records (`tickmesh recover compare`; expected 0: a restored region takes
#        its home sources back from the peers before its feeds start; ARCHITECTURE.md);
#      holes: seqs the peer holds, below the restarted region's last, that it lacks (0).
#      With MODE=restore the backup lags, but a restored region takes its home sources
#      back from the peers before its feeds start, so nothing is lost (rpo 0).
# Targets (issue #9): RPO under 1 s of data, RTO under 60 s.
#
# Environment: TICKMESH_BIN (default ${CARGO_TARGET_DIR:-target}/debug/tickmesh, built when
# missing), VICTIM (default eu-west-1), RUN_SECS before the kill (default 8),
# BACKUP_EVERY seconds (default 1), RATE records/s per region (default 1000),
# KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TICKMESH_BIN:-${CARGO_TARGET_DIR:-target}/debug/tickmesh}
VICTIM=${VICTIM:-eu-west-1}
RUN_SECS=${RUN_SECS:-8}
BACKUP_EVERY=${BACKUP_EVERY:-1}
RATE=${RATE:-1000}
MODE=${MODE:-plan}
if [[ ! -x $BIN ]]; then
  echo "$BIN is missing; building it" >&2
  cargo build -p tickmesh --bin tickmesh >&2
fi

WORK=$(mktemp -d -t tickmesh-dr-drill.XXXXXX)
STATE=$WORK/state
BACKUP=$WORK/backup
demo_pid="" loop_pid="" node_pid=""
cleanup() {
  for p in $loop_pid $node_pid $demo_pid; do
    kill "$p" 2>/dev/null || true
  done
  for p in $loop_pid $node_pid $demo_pid; do
    wait "$p" 2>/dev/null || true
  done
  if [[ ${KEEP:-0} == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
log() { echo "dr-drill: $*" >&2; }
# Field of the first JSON line on stdin, by a Python expression on `v`.
jq_py() { python3 -c "import json,sys; v=json.loads(sys.stdin.readline()); print($1)"; }

log "starting the demo in $STATE"
"$BIN" demo --json --port-base 0 --state-dir "$STATE" --feed synthetic --rate "$RATE" >"$WORK/demo.out" 2>"$WORK/demo.err" &
demo_pid=$!
for _ in $(seq 1 900); do
  grep -q '"event":"ready"' "$WORK/demo.out" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$WORK/demo.err" >&2; log "the demo exited"; exit 1; }
  sleep 0.1
done
grep -q '"event":"ready"' "$WORK/demo.out" || { log "the demo did not get ready within 90 s"; exit 1; }
victim_line=$(grep "\"region_up\"" "$WORK/demo.out" | grep "\"$VICTIM\"") || { log "no region $VICTIM in the demo"; exit 1; }
victim_pid=$(echo "$victim_line" | jq_py 'v["pid"]')
victim_http=$(echo "$victim_line" | jq_py 'v["http_url"]')
peer=$(grep "\"region_up\"" "$WORK/demo.out" | grep -v "\"$VICTIM\"" | head -n 1 | jq_py 'v["region"]')
home_src=$(python3 -c "import tomllib; print(tomllib.load(open('$STATE/$VICTIM/node.toml','rb'))['feeds'][0]['source'])")
log "victim $VICTIM (pid $victim_pid, home source $home_src), peer used for reference: $peer"

# Continuous incremental backups of the victim.
(
  while true; do
    "$BIN" backup --state-dir "$STATE/$VICTIM" --to "$BACKUP" >>"$WORK/backups.out" 2>>"$WORK/backups.err" || true
    sleep "$BACKUP_EVERY"
  done
) &
loop_pid=$!
sleep "$RUN_SECS"

# The disaster: the region dies and its disk is lost. Backups stop with it.
kill "$loop_pid" 2>/dev/null || true
wait "$loop_pid" 2>/dev/null || true
loop_pid=""
kill -9 "$victim_pid"
t_kill=$(now_ms)
log "killed $VICTIM; $(wc -l <"$WORK/backups.out") backups were taken"
rm -rf "$STATE/$VICTIM/journal" "$STATE/$VICTIM/audit"
sleep 1 # let the peers notice

# What the peers hold of the victim's home source (read from their files, not their API).
peer_json=$("$BIN" backup --state-dir "$STATE/$peer" --to "$WORK/peer-snapshot")
peer_last=$(echo "$peer_json" | jq_py "v['sources']['$home_src']['last_seq']")
peer_max_ts=$(echo "$peer_json" | jq_py "v['sources']['$home_src']['max_ts']")

t_restore=$(now_ms)
if [[ $MODE == restore ]]; then
  "$BIN" restore --from "$BACKUP" --state-dir "$STATE/$VICTIM" >"$WORK/restore.out"
else
  "$BIN" recover plan --state-dir "$STATE/$VICTIM" --from "$BACKUP" --from "$WORK/peer-snapshot" \
    --out "$WORK/plan.json" >&2
  "$BIN" recover apply "$WORK/plan.json" >"$WORK/restore.out"
fi
# What the victim holds now, read from its files.
restored_json=$("$BIN" backup --state-dir "$STATE/$VICTIM" --to "$WORK/restored-snapshot")
restored_last=$(echo "$restored_json" | jq_py "v['sources']['$home_src']['last_seq']")
restored_max_ts=$(echo "$restored_json" | jq_py "v['sources']['$home_src']['max_ts']")
"$BIN" node --config "$STATE/$VICTIM/node.toml" >"$WORK/restarted.log" 2>&1 &
node_pid=$!
ready=0
for _ in $(seq 1 1200); do
  code=$(python3 -c "
import urllib.request,sys
try:
    print(urllib.request.urlopen('$victim_http/readyz', timeout=1).status)
except Exception as e:
    print(getattr(e, 'code', 0))" 2>/dev/null || echo 0)
  if [[ $code == 200 ]]; then ready=1; break; fi
  kill -0 "$node_pid" 2>/dev/null || { tail -n 20 "$WORK/restarted.log" >&2; log "the restarted node exited"; exit 1; }
  sleep 0.05
done
t_ready=$(now_ms)
[[ $ready == 1 ]] || { log "$VICTIM did not become ready within 60 s"; exit 1; }

# The restarted region continues its own source after the restored seq.
sleep 2
after_json=$("$BIN" backup --state-dir "$STATE/$VICTIM" --to "$WORK/after-snapshot")
after_last=$(echo "$after_json" | jq_py "v['sources']['$home_src']['last_seq']")
after_first_new=$(( restored_last + 1 ))
next_seq_ok=false
(( after_last >= after_first_new )) && next_seq_ok=true

# Byte for byte against the peer: a differing record under the same seq is a reused seq;
# a seq the peer holds below the victim's last that the victim lacks is a hole.
cmp_json=$("$BIN" recover compare --state-dir "$STATE/$VICTIM" --with "$STATE/$peer" --source "$home_src")
seqs_reused=$(echo "$cmp_json" | jq_py "v['comparison']['differing']")
holes=$(echo "$cmp_json" | jq_py "v['comparison']['missing']")

backup_lag_records=$(( peer_last > restored_last ? peer_last - restored_last : 0 ))
backup_lag_ms=$(( peer_max_ts > restored_max_ts ? (peer_max_ts - restored_max_ts) / 1000000 : 0 ))
rpo_records=$(( holes + (peer_last > after_last ? peer_last - after_last : 0) ))
rpo_ms=0
(( rpo_records == 0 )) || rpo_ms=$backup_lag_ms
rto_ms=$(( t_ready - t_restore ))
rto_from_kill_ms=$(( t_ready - t_kill ))
printf '{"event":"dr_drill","mode":"%s","victim":"%s","home_source":"%s","backups":%s,"backup_every_s":%s,"peer_last_seq":%s,"restored_last_seq":%s,"backup_lag_records":%s,"backup_lag_ms":%s,"rpo_records":%s,"rpo_ms":%s,"rto_ms":%s,"rto_from_kill_ms":%s,"next_seq_ok":%s,"restarted_last_seq":%s,"seqs_reused":%s,"holes":%s}\n' \
  "$MODE" "$VICTIM" "$home_src" "$(wc -l <"$WORK/backups.out")" "$BACKUP_EVERY" "$peer_last" "$restored_last" \
  "$backup_lag_records" "$backup_lag_ms" "$rpo_records" "$rpo_ms" "$rto_ms" "$rto_from_kill_ms" "$next_seq_ok" "$after_last" "$seqs_reused" "$holes"
ok=1
(( rpo_ms < 1000 )) || { log "RPO ${rpo_ms} ms is above the 1 s target"; ok=0; }
(( rto_ms < 60000 )) || { log "RTO ${rto_ms} ms is above the 60 s target"; ok=0; }
[[ $next_seq_ok == true ]] || { log "the restarted region did not continue its home source"; ok=0; }
(( seqs_reused == 0 )) || { log "$seqs_reused seqs of $home_src were reused (records differ from $peer's)"; ok=0; }
(( holes == 0 )) || { log "$holes seqs of $home_src that $peer holds are missing in the restarted $VICTIM"; ok=0; }
[[ $ok == 1 ]]
