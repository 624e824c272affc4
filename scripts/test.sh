#!/usr/bin/env bash
# Everything the tests need, then lint, types and the test suite.
# Debian packages: xmlsec1 and openssl are the independent verifiers the tests compare against; PostgreSQL runs the
# calendar tests a second time on a real server (scripts/postgres.sh starts it on 127.0.0.1); trang (RELAX NG
# compact -> XML) checks that the committed schemas/*.rng are generated from schemas/*.rnc; openssh-server lets a test
# log in, over real SSH, under the account a federation user is mapped to.
#
# Usage: bash scripts/test.sh [pytest arguments]     e.g. bash scripts/test.sh tests/calendar -k overlap -x
#        bash scripts/test.sh --down                 stop the services an earlier run left running
# The services (PostgreSQL on 127.0.0.1, OAR's Almighty and its REST API on 127.0.0.1:6668) are left running after the
# tests, so that the next run starts at once; the last lines say so and how to stop them.
source "$(dirname "$0")/lib.sh"
if [ "${1:-}" = --down ]; then
    bash "$REPO/scripts/oar.sh" down
    bash "$REPO/scripts/postgres.sh" down
    exit 0
fi
apt_install xmlsec1 openssl ca-certificates trang openssh-server openssh-client
venv_install "[test]"
cd "$REPO"
left_running() {
    echo "== left running (stop them with: bash scripts/test.sh --down):"
    echo "   PostgreSQL $(pg_lsclusters -h 2>/dev/null | awk 'NR == 1 {print $1 "/" $2 " on port " $3 ": " $4}')"
    echo "   OAR: $(bash "$REPO/scripts/oar.sh" status 2>/dev/null | grep -E '^(Almighty|apache2|API):' | paste -sd ';' -)"
}
trap left_running EXIT
echo "== PostgreSQL"
SFA_OMF_TEST_POSTGRES_URL="$(bash "$REPO/scripts/postgres.sh" sfaomf_test | tail -n 1)"
export SFA_OMF_TEST_POSTGRES_URL
echo "== OAR"
SFA_OMF_TEST_OAR_URL="$(bash "$REPO/scripts/oar.sh" up | tail -n 1)"
export SFA_OMF_TEST_OAR_URL
echo "== ruff"
"$VENV/bin/ruff" check sfa_omf rspec tests benchmarks
"$VENV/bin/ruff" format --check sfa_omf rspec tests benchmarks
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
PATH="$VENV/bin:$PATH" "$VENV/bin/pytest" "$@"
