#!/bin/sh
# Entry point of the SAGES CVS Challenge 2024 container (Dockerfile next to it): one input video,
# one cvs-criteria.json. The paths can be overridden to try it without Docker, e.g.
#   INPUT_DIR=test/input OUTPUT_DIR=test/output RUN_DIR=runs/x sh scripts/sages_container/entrypoint.sh
set -eu
INPUT_DIR="${INPUT_DIR:-/input}"
OUTPUT_DIR="${OUTPUT_DIR:-/output}"
RUN_DIR="${RUN_DIR:-/opt/cvsjepa/run}"
CVSJEPA="${CVSJEPA:-cvsjepa}"
mkdir -p "$OUTPUT_DIR"
# --format sages2024 applies the challenge's checks (90 x 3, each in [0, 1]) and exits non-zero
# without writing when they fail, so a broken output never reaches the leaderboard.
exec $CVSJEPA predict "$INPUT_DIR/laparoscopic-video.mp4" --run "$RUN_DIR" --format sages2024 \
    --out "$OUTPUT_DIR" --no-progress
