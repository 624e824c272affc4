#!/usr/bin/env bash
# Everything the tests need, then lint, types and the test suite.
# Debian packages: xmlsec1 and openssl are the independent verifiers the tests compare against; PostgreSQL runs the
# calendar tests a second time on a real server (scripts/postgres.sh starts it on 127.0.0.1); trang (RELAX NG
# compact -> XML) checks that the committed schemas/*.rng are generated from schemas/*.rnc; openssh-server lets a test
# log in, over real SSH, under the account a federation user is mapped to; RabbitMQ (scripts/rabbitmq.sh, on
# 127.0.0.1) carries the FRCP messages of the OMF backend's tests; chromium (scripts/chromium.sh) is the real browser
# the web calendar's tests drive with Playwright, their screenshots land in test-artifacts/; LXC (scripts/lxc.sh, with
# a bridge of the project's own) runs the containers of tests/images/test_lxc.py; iproute2 lets the node agent tests put
# the server and agents in network namespaces of their own (root needed), where openvpn runs the nodes' VPN and bind9
# (queried with dig) their names; the tests start those daemons themselves, so the packages' own services are stopped;
# systemd gives systemd-analyze, which checks config/sfa-omf.service, and sudo gives visudo, which checks the node
# side's sudo rule (neither starts a daemon).
#
# Every test must run (SFA_OMF_TEST_REQUIRE_ALL=1, tests/requirements.py): a test that skips fails, and no network
# namespaces here is a failure of the whole run. A developer without root may run SFA_OMF_TEST_REQUIRE_ALL=0
# bash scripts/test.sh ... to let the tests that need them skip, saying why; CI (.ci/run) never does.
#
# Usage: bash scripts/test.sh [pytest arguments]     e.g. bash scripts/test.sh tests/calendar -k overlap -x
#        bash scripts/test.sh --down                 stop the services an earlier run left running
# The services (PostgreSQL and RabbitMQ on 127.0.0.1, OAR's Almighty and its REST API on 127.0.0.1:6668) are left
# running after the tests, so that the next run starts at once; the last lines say so and how to stop them. The LXC
# bridge is removed when the tests end.
source "$(dirname "$0")/lib.sh"
if [ "${1:-}" = --down ]; then
    # Each service's down succeeds when it is stopped already; one that fails does not keep the next from stopping.
    not_stopped=()
    for service in oar rabbitmq postgres; do
        bash "$REPO/scripts/$service.sh" down || not_stopped+=("$service")
    done
    if [ ${#not_stopped[@]} -gt 0 ]; then
        echo "test.sh --down: could not stop: ${not_stopped[*]} (see the lines above)" >&2
        exit 1
    fi
    exit 0
fi
apt_install xmlsec1 openssl ca-certificates trang openssh-server openssh-client iproute2 openvpn bind9 bind9-dnsutils \
    systemd sudo faketime bindfs
export SFA_OMF_TEST_REQUIRE_ALL="${SFA_OMF_TEST_REQUIRE_ALL:-1}"
venv_install "[test]"
cd "$REPO"
if command -v systemctl >/dev/null && systemctl is-active --quiet named 2>/dev/null; then
    as_root systemctl disable --now named  # the tests run their own named inside a namespace
fi
left_running() {
    echo "== left running (stop them with: bash scripts/test.sh --down):"
    echo "   PostgreSQL $(pg_lsclusters -h 2>/dev/null | awk 'NR == 1 {print $1 "/" $2 " on port " $3 ": " $4}')"
    echo "   OAR: $(bash "$REPO/scripts/oar.sh" status 2>/dev/null | grep -E '^(Almighty|apache2|API):' | paste -sd ';' -)"
    echo "   RabbitMQ: $(bash "$REPO/scripts/rabbitmq.sh" status 2>/dev/null | head -n 1)"
}
names_tests() {  # do the arguments name tests (a file, a folder, a test id), or only options for all of them?
    local argument
    for argument in "$@"; do
        if [[ "$argument" == *::* ]] || { [[ "$argument" != -* ]] && [ -e "$argument" ]; }; then
            return 0
        fi
    done
    return 1
}
GROUP_PIDS=()
GROUP_NAMES=()
start_group() {  # start_group NAME POSTGRES_URL PATH_OR_OPTION... -- PYTEST_ARGUMENT...   (in the background)
    local name="$1" url="$2" paths=()
    shift 2
    while [ "$1" != -- ]; do
        paths+=("$1")
        shift
    done
    shift
    SFA_OMF_TEST_POSTGRES_URL="$url" "$VENV/bin/pytest" "$@" "${paths[@]}" >"$GROUP_LOGS/${#GROUP_PIDS[@]}.log" 2>&1 &
    GROUP_PIDS+=("$!")
    GROUP_NAMES+=("$name")
}
wait_groups() {  # the status of every group started, their logs; fails when one failed
    local i statuses=() status failed=0 ran=0
    for i in "${!GROUP_PIDS[@]}"; do
        status=0
        wait "${GROUP_PIDS[$i]}" || status=$?
        statuses+=("$status")
        if [ "$status" != 5 ]; then ran=1; fi
    done
    for i in "${!GROUP_NAMES[@]}"; do
        echo "== pytest: ${GROUP_NAMES[$i]} (exit status ${statuses[$i]})"
        cat "$GROUP_LOGS/$i.log"
    done
    for i in "${!GROUP_NAMES[@]}"; do
        # 5 is pytest's "no test collected": a -k or -m that selects tests of some groups only is no failure of the
        # others (unless no group ran any).
        if [ "${statuses[$i]}" != 0 ] && { [ "${statuses[$i]}" != 5 ] || [ "$ran" = 0 ]; }; then
            echo "== pytest failed: ${GROUP_NAMES[$i]} (exit status ${statuses[$i]})"
            failed=1
        fi
    done
    return "$failed"
}
SFA_OMF_TEST_LXC_BRIDGE=""
RABBITMQ_VHOST=""
at_exit() {
    if [ -n "$SFA_OMF_TEST_LXC_BRIDGE" ]; then
        bash "$REPO/scripts/lxc.sh" down "$SFA_OMF_TEST_LXC_BRIDGE" || true
    fi
    if [ -n "$RABBITMQ_VHOST" ]; then
        bash "$REPO/scripts/rabbitmq.sh" drop "$RABBITMQ_VHOST" || true
    fi
    left_running
}
trap at_exit EXIT
echo "== PostgreSQL"
SFA_OMF_TEST_POSTGRES_URL="$(bash "$REPO/scripts/postgres.sh" sfaomf_test | tail -n 1)"
export SFA_OMF_TEST_POSTGRES_URL
echo "== RabbitMQ"
RABBITMQ_VHOST="sfaomf_test_$$"  # this run's own: another run on the broker (a developer's, CI's) never crosses it
SFA_OMF_TEST_RABBITMQ_URL="$(bash "$REPO/scripts/rabbitmq.sh" up "$RABBITMQ_VHOST" | tail -n 1)"
export SFA_OMF_TEST_RABBITMQ_URL
echo "== chromium"
SFA_OMF_TEST_CHROMIUM="$(bash "$REPO/scripts/chromium.sh" | tail -n 1)"
export SFA_OMF_TEST_CHROMIUM
export SFA_OMF_TEST_ARTIFACTS="${SFA_OMF_TEST_ARTIFACTS:-$REPO/test-artifacts}"
echo "== LXC (the project's own bridge, removed when the tests end)"
SFA_OMF_TEST_LXC_BRIDGE="$(bash "$REPO/scripts/lxc.sh" up | tail -n 1)"
export SFA_OMF_TEST_LXC_BRIDGE
echo "== OAR"
SFA_OMF_TEST_OAR_URL="$(bash "$REPO/scripts/oar.sh" up | tail -n 1)"
export SFA_OMF_TEST_OAR_URL
echo "== network namespaces"
probe="sfaomf-probe-$$"
if [ "$(id -u)" = 0 ] && ip netns add "$probe" && ip netns del "$probe"; then
    export SFA_OMF_TEST_NETNS=1
elif [ "$SFA_OMF_TEST_REQUIRE_ALL" != 0 ]; then
    echo "test.sh: network namespaces unavailable (root and ip netns needed), so the node agents' VPN and DNS tests" \
        "cannot run; every test must (SFA_OMF_TEST_REQUIRE_ALL=0 lets them skip, for a developer's own runs)" >&2
    exit 1
else
    echo "network namespaces unavailable (root and ip netns needed): their tests skip (SFA_OMF_TEST_REQUIRE_ALL=0)"
fi
echo "== ruff"
"$VENV/bin/ruff" check sfa_omf rspec tests benchmarks
"$VENV/bin/ruff" format --check sfa_omf rspec tests benchmarks
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
export PATH="$VENV/bin:$PATH"
if [ "${SFA_OMF_TEST_PROCESSES:-2}" = 1 ] || names_tests "$@"; then
    "$VENV/bin/pytest" "$@"
else
    # The whole suite in four pytest processes at once: most of its time is spent waiting (on OAR, on deadlines, on
    # servers and containers starting), so four overlap well on two cores. Each has a PostgreSQL database of its own.
    # Tests that use one machine-wide thing run in one process: OAR (its API is stopped by some) and LXC (the
    # aggregates of different databases would give containers the same addresses on the bridge) in the first, with
    # the SSH login test that makes the Unix account an OAR test makes too; RabbitMQ, network namespaces and the
    # agents' Unix accounts in the second. The rest is split in two of about the same length (measured with
    # --durations): the calendar, the AM API, several hosts and what is hostile in the third, every other test (a new
    # folder of tests lands there by itself) in the fourth.
    GROUP_LOGS="$(mktemp -d)"
    OAR_LXC_TESTS=(tests/testbed/oar tests/images tests/agents/test_oar_nodes.py tests/testbed/test_foreign_login.py
        tests/calendar/test_external_partial_clash.py tests/notify/test_repaired_alert.py)
    SYSTEM_TESTS=(tests/testbed tests/agents tests/am/test_users_keys.py)
    CALENDAR_TESTS=(tests/calendar tests/am tests/cluster tests/hostile tests/rspec tests/trust)
    ignore_oar_lxc=("${OAR_LXC_TESTS[@]/#/--ignore=}")
    ignore_system=("${SYSTEM_TESTS[@]/#/--ignore=}")
    ignore_calendar=("${CALENDAR_TESTS[@]/#/--ignore=}")
    echo "pytest in four processes (SFA_OMF_TEST_PROCESSES=1 runs one): ${OAR_LXC_TESTS[*]}; ${SYSTEM_TESTS[*]}" \
        "(without the first's); ${CALENDAR_TESTS[*]} (without the first two's); every other test"
    start_group "OAR and LXC" "$SFA_OMF_TEST_POSTGRES_URL" "${OAR_LXC_TESTS[@]}" -- "$@"
    start_group "RabbitMQ, namespaces, accounts" "$(bash "$REPO/scripts/postgres.sh" sfaomf_test_third | tail -n 1)" \
        "${SYSTEM_TESTS[@]}" "${ignore_oar_lxc[@]}" -- "$@"
    start_group "calendar, AM API, hosts, hostile" \
        "$(bash "$REPO/scripts/postgres.sh" sfaomf_test_fourth | tail -n 1)" \
        "${CALENDAR_TESTS[@]}" "${ignore_oar_lxc[@]}" "${ignore_system[@]}" -- "$@"
    start_group "every other test" "$(bash "$REPO/scripts/postgres.sh" sfaomf_test_second | tail -n 1)" \
        tests "${ignore_oar_lxc[@]}" "${ignore_system[@]}" "${ignore_calendar[@]}" -- "$@"
    status=0
    wait_groups || status=$?
    rm -rf "$GROUP_LOGS"
    exit "$status"
fi
