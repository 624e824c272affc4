#!/usr/bin/env bash
# The main job on the embedded default: install sfa-omf, then create the demo authority in ./demo
# (a root authority, the aggregate's identity, sfi.py-ready users alice and bob, a demo slice).
# Usage: bash scripts/demo.sh [DIR]
source "$(dirname "$0")/lib.sh"
DIR="${1:-$REPO/demo}"
apt_install openssl ca-certificates
venv_install ""
"$VENV/bin/sfa-omf" init "$DIR" --user alice --user bob
echo
echo "Try:  $VENV/bin/sfa-omf gid show $DIR/users/alice/sfi/testbed.alice.user.gid"
echo "      $VENV/bin/sfa-omf credential verify --trusted-roots $DIR/trusted_roots \\"
echo "          --caller $DIR/users/alice/sfi/testbed.alice.user.gid --operation createsliver \\"
echo "          $DIR/users/alice/sfi/testbed.alice-testbed.demo.slice.cred"
