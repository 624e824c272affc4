#!/usr/bin/env bash
# The main job on the embedded default: install sfa-omf, then run the aggregate from ./demo (created on first run:
# a local authority, the aggregate's identity, sfi.py-ready users alice and bob, a demo slice, SQLite and five demo
# nodes) on 127.0.0.1:12346 until interrupted (Ctrl-C).
# Usage: bash scripts/demo.sh [DIR]
source "$(dirname "$0")/lib.sh"
DIR="${1:-$REPO/demo}"
apt_install openssl ca-certificates
venv_install ""
exec "$VENV/bin/sfa-omf" quickstart "$DIR"
