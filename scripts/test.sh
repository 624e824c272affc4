#!/usr/bin/env bash
# Everything the tests need, then lint, types and the test suite.
# Debian packages: xmlsec1 and openssl are the independent verifiers the tests compare against; PostgreSQL runs the
# calendar tests a second time on a real server (scripts/postgres.sh starts it on 127.0.0.1); trang (RELAX NG
# compact -> XML) checks that the committed schemas/*.rng are generated from schemas/*.rnc; openssh-server lets a test
# log in, over real SSH, under the account a federation user is mapped to; RabbitMQ (scripts/rabbitmq.sh, on
# 127.0.0.1) carries the FRCP messages of the OMF backend's tests; chromium (scripts/chromium.sh) is the real browser
# the web calendar's tests drive with Playwright, their screenshots land in test-artifacts/; LXC (scripts/lxc.sh, with
# a bridge of the project's own) runs the containers of tests/images/test_lxc.py.
# Usage: bash scripts/test.sh [pytest arguments]
source "$(dirname "$0")/lib.sh"
apt_install xmlsec1 openssl ca-certificates trang openssh-server openssh-client
venv_install "[test]"
cd "$REPO"
echo "== PostgreSQL"
SFA_OMF_TEST_POSTGRES_URL="$(bash "$REPO/scripts/postgres.sh" sfaomf_test | tail -n 1)"
export SFA_OMF_TEST_POSTGRES_URL
echo "== RabbitMQ"
SFA_OMF_TEST_RABBITMQ_URL="$(bash "$REPO/scripts/rabbitmq.sh" up | tail -n 1)"
export SFA_OMF_TEST_RABBITMQ_URL
echo "== chromium"
SFA_OMF_TEST_CHROMIUM="$(bash "$REPO/scripts/chromium.sh" | tail -n 1)"
export SFA_OMF_TEST_CHROMIUM
export SFA_OMF_TEST_ARTIFACTS="${SFA_OMF_TEST_ARTIFACTS:-$REPO/test-artifacts}"
echo "== LXC (the project's own bridge, removed when the tests end)"
SFA_OMF_TEST_LXC_BRIDGE="$(bash "$REPO/scripts/lxc.sh" up | tail -n 1)"
export SFA_OMF_TEST_LXC_BRIDGE
trap 'bash "$REPO/scripts/lxc.sh" down "$SFA_OMF_TEST_LXC_BRIDGE"' EXIT
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
