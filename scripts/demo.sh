#!/usr/bin/env bash
# `make demo`: a small demo corpus indexed with the committed demo checkpoint, then the API on
# http://127.0.0.1:8000 with ready-to-run curl examples. Re-running skips what is already done (the
# corpus when complete; `cavsync index` skips content already indexed, by hash). Ctrl-C stops it.
#
# Knobs (environment):
#   DEMO_PORT       port the API listens on (default 8000); checked first: a busy port fails at once, e.g.
#                   DEMO_PORT=8001 make demo
#   DEMO_HOST       interface it listens on (default 127.0.0.1)
#   CAVSYNC_SHARED  folder of shared samples (default ../shared): the clips in its media/ are copied into the
#                   demo corpus and indexed too when it exists (real videos next to the synthetic ones)
#   DEMO_DATA (data/demo), DEMO_CLIPS (40), DEMO_SEED (7): where the demo lives, how many synthetic clips, their seed
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
MODEL=$(pwd)/checkpoints/cavsync_tiny_demo.safetensors
CLIPS=${DEMO_CLIPS:-40}
SEED=${DEMO_SEED:-7}
HOST=${DEMO_HOST:-127.0.0.1}
PORT=${DEMO_PORT:-8000}
SHARED=${CAVSYNC_SHARED:-../shared}
mkdir -p "${DEMO_DATA:-data/demo}/media"
DATA=$(cd "${DEMO_DATA:-data/demo}" && pwd) # absolute: paths are stored in the catalog
MEDIA=$DATA/media
URL=http://$HOST:$PORT

# The demo runs embedded: SQLite catalog in the data dir, indexing jobs in the API process, no broker.
unset CAVSYNC_BROKER_URL
export CAVSYNC_DATA_DIR=$DATA CAVSYNC_MODEL_PATH=$MODEL CAVSYNC_DATABASE_URL=sqlite:///$DATA/catalog.db
export CAVSYNC_MEDIA_ROOTS="[\"$MEDIA\"]"

started=$SECONDS
step() { printf '\n==> [%3ds] %s\n' "$((SECONDS - started))" "$*"; }

healthy() { "$BIN/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=3)" \
  "$URL" >/dev/null 2>&1; }
# The port first, before any work: binding it as uvicorn will (SO_REUSEADDR) fails at once when it is taken.
port_free() {
  "$BIN/python" - "$HOST" "$PORT" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
except OSError as exc:
    print(exc.strerror or exc, file=sys.stderr)
    sys.exit(1)
PY
}
if ! reason=$(port_free 2>&1); then
  echo "error: cannot listen on $HOST:$PORT ($reason): stop what uses it or pick another port, e.g. DEMO_PORT=8001 make demo" >&2
  exit 1
fi

# 1. The synthetic corpus (metadata.jsonl is written last: present with every row = complete).
SYNTH=$MEDIA/synth
if [ -f "$SYNTH/metadata.jsonl" ] && [ "$(wc -l <"$SYNTH/metadata.jsonl")" -eq "$CLIPS" ]; then
  step "synthetic corpus: $CLIPS clips already in $SYNTH"
else
  step "generating $CLIPS synthetic clips (seed $SEED) into $SYNTH"
  "$BIN/cavsync" synth --out "$SYNTH" --n "$CLIPS" --seed "$SEED" --workers 2
fi

# 1b. Longer videos (1-3 min): demo clips of another seed back to back, one track each once indexed.
PARTS=$DATA/long_parts # outside the media root: only the long videos are indexed
LONG=$MEDIA/long
FFMPEG=$("$BIN/python" -c 'from model.media import ffmpeg_binary; print(ffmpeg_binary())')
if [ -f "$LONG/long_3.mp4" ]; then
  step "long videos already in $LONG"
else
  step "making 3 long videos (6, 9 and 12 clips of seed $((SEED + 1))) into $LONG"
  "$BIN/cavsync" synth --out "$PARTS" --n 27 --seed "$((SEED + 1))" --workers 2
  mkdir -p "$LONG"
  parts=("$PARTS"/*.mp4)
  first=0
  for k in 1 2 3; do
    count=$((3 * k + 3))
    printf "file '%s'\n" "${parts[@]:first:count}" >"$PARTS/long_$k.txt"
    "$FFMPEG" -nostdin -loglevel error -y -f concat -safe 0 -i "$PARTS/long_$k.txt" -c copy "$LONG/.long_$k.mp4"
    mv "$LONG/.long_$k.mp4" "$LONG/long_$k.mp4"
    first=$((first + count))
  done
fi

# 2. The real clips of the shared folder, when there is one.
REAL=$MEDIA/real
if compgen -G "$SHARED/media/*.mp4" >/dev/null; then
  mkdir -p "$REAL"
  for clip in "$SHARED"/media/*.mp4; do
    [ -f "$REAL/$(basename "$clip")" ] || cp "$clip" "$REAL/"
  done
  step "real clips: $(ls "$REAL" | wc -l) in $REAL"
else
  step "note: no clips in $SHARED/media, the demo has the synthetic corpus only"
fi

# 3. Index (already-indexed files are skipped by content hash).
step "indexing $MEDIA with $(basename "$MODEL")"
"$BIN/cavsync" index "$MEDIA" --workers 2 # the model and data dir of CAVSYNC_MODEL_PATH / CAVSYNC_DATA_DIR

# 4. Serve, and print examples once it answers.
step "starting the API on $URL"
"$BIN/cavsync" serve --host "$HOST" --port "$PORT" &
server=$!
trap 'status=$?; kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit $status' EXIT # the script's own status, not the server's
# Ctrl-C (or a TERM) is how the demo stops: a clean exit (status 0), the server stopped by the EXIT trap
trap 'echo; echo "demo stopped"; exit 0' INT TERM
for _ in $(seq 240); do
  healthy && break
  kill -0 "$server" 2>/dev/null || { echo "error: the server exited" >&2; exit 1; }
  sleep 0.5
done
healthy || { echo "error: no answer from $URL/health after 120 s" >&2; exit 1; }

A2V=$(ls "$SYNTH"/*.mp4 | head -n 1)
V2A=$(ls "$REAL"/*.mp4 2>/dev/null | head -n 1 || true)
V2A=${V2A:-$(ls "$SYNTH"/*.mp4 | sed -n 2p)}
EXCERPT=$DATA/excerpt_4s_to_7s.wav # 3 s of the first clip's audio: which video, and which moment?
[ -f "$EXCERPT" ] || "$("$BIN/python" -c 'from model.media import ffmpeg_binary; print(ffmpeg_binary())')" \
  -nostdin -loglevel error -ss 4 -t 3 -i "$A2V" -vn -ac 1 -ar 16000 "$EXCERPT"
# An off-grid excerpt of a long video: 10 s from 23.3 s of long_2 (clips start every 10.24 s, frames every 0.64 s).
OFFGRID=$DATA/excerpt_long2_23.3s_to_33.3s.wav
[ -f "$OFFGRID" ] || "$FFMPEG" -nostdin -loglevel error -ss 23.3 -t 10 -i "$LONG/long_2.mp4" -vn -ac 1 -ar 16000 "$OFFGRID"
step "an off-grid excerpt (10 s from 23.3 s of $LONG/long_2.mp4), searched now:"
curl -s -m 60 -F file=@"$OFFGRID" -F top_k=3 -F moments=2 "$URL/search/audio-to-video" | "$BIN/python" -c '
import json, sys
body = json.load(sys.stdin)
print("  query:", body["query"]["frames"], "frames (one per 0.64 s); search", body["timings"]["search_ms"], "ms")
for r in body["results"]:
    spans = ", ".join("%.2f-%.2f s (%.3f)" % (m["start"], m["end"], m["score"]) for m in r["moments"])
    print("  %.3f  %s  moments: %s" % (r["score"], r["uri"].split("/")[-1], spans))
'
KEY=""
[ -n "${CAVSYNC_API_KEY:-}" ] && KEY=" -H 'X-API-Key: $CAVSYNC_API_KEY'" # write routes only
step "ready in $((SECONDS - started)) s"
cat <<EOF

  The web page: open $URL/ in a browser (search by a file, a recording or an indexed video; the catalog; jobs).
  Try dropping $EXCERPT on it.

  Or from another terminal:

  curl -s $URL/health
  # which videos sound like this clip (audio -> video), best first, with the matched moments
  curl -s -F file=@$A2V -F top_k=5 -F strategy=diagonal_mean $URL/search/audio-to-video
  # which video, and which moment, sounds like this 3-s excerpt (4-7 s of that clip): see "moments"
  curl -s -F file=@$EXCERPT -F top_k=3 $URL/search/audio-to-video
  # a 10-s excerpt of a long video cut off the clip grid (23.3-33.3 s of long_2): up to 3 moments per video
  curl -s -F file=@$OFFGRID -F top_k=3 -F moments=3 $URL/search/audio-to-video
  # which soundtracks fit these pictures (video -> audio)
  curl -s -F file=@$V2A -F top_k=5 $URL/search/video-to-audio
  # where in the clip's frame at 3 s its sound (the segment around 3 s) comes from, as a PNG heat map
  curl -s -F image=@$A2V -F time=3.0 -F audio=@$A2V -F audio_time=3.0 "$URL/localize?format=png" -o localize.png
  # the same as JSON (the patch grid and its peak), on an indexed video by id
  curl -s -F video_id=1 -F time=3.0 -F audio_video_id=1 -F audio_time=3.0 $URL/localize
  # the catalog
  curl -s "$URL/videos?limit=5"
  # index more media (paths on this machine, under $MEDIA), then follow the job
  curl -s$KEY -H 'content-type: application/json' -d '{"paths": ["$SYNTH"]}' $URL/index
  curl -s $URL/jobs/JOB_ID

Web page: $URL/    Interactive API docs (offline): $URL/docs    Stop: Ctrl-C
EOF
wait "$server"
