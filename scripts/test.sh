#!/usr/bin/env bash
# Everything the tests need, then lint, types and the test suite.
# Debian packages: xmlsec1 and openssl are the independent verifiers the tests compare against; PostgreSQL runs the
# calendar tests a second time on a real server (scripts/postgres.sh starts it on 127.0.0.1); trang (RELAX NG
# compact -> XML) checks that the committed schemas/*.rng are generated from schemas/*.rnc; openssh-server lets a test
# log in, over real SSH, under the account a federation user is mapped to; iproute2 lets the node agent tests put the
# server and agents in network namespaces of their own (root needed), where openvpn runs the nodes' VPN and bind9
# (queried with dig) their names; the tests start those daemons themselves, so the packages' own services are stopped.
# Usage: bash scripts/test.sh [pytest arguments]
source "$(dirname "$0")/lib.sh"
apt_install xmlsec1 openssl ca-certificates trang openssh-server openssh-client iproute2 openvpn bind9 bind9-dnsutils
venv_install "[test]"
cd "$REPO"
if command -v systemctl >/dev/null && systemctl is-active --quiet named 2>/dev/null; then
    as_root systemctl disable --now named  # the tests run their own named inside a namespace
fi
echo "== PostgreSQL"
SFA_OMF_TEST_POSTGRES_URL="$(bash "$REPO/scripts/postgres.sh" sfaomf_test | tail -n 1)"
export SFA_OMF_TEST_POSTGRES_URL
echo "== OAR"
SFA_OMF_TEST_OAR_URL="$(bash "$REPO/scripts/oar.sh" up | tail -n 1)"
export SFA_OMF_TEST_OAR_URL
echo "== network namespaces"
probe="sfaomf-probe-$$"
if [ "$(id -u)" = 0 ] && ip netns add "$probe" && ip netns del "$probe"; then
    export SFA_OMF_TEST_NETNS=1
else
    echo "network namespaces unavailable (root and ip netns needed): tests/agents/test_netns.py will say so"
fi
echo "== ruff"
"$VENV/bin/ruff" check sfa_omf rspec tests benchmarks
"$VENV/bin/ruff" format --check sfa_omf rspec tests benchmarks
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
PATH="$VENV/bin:$PATH" "$VENV/bin/pytest" "$@"
