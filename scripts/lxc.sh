#!/usr/bin/env bash
# Real LXC for the instances of sfa-omf (containers inside a booking), from Debian: lxc, a static busybox for the
# offline busybox template, dropbear for SSH inside the containers (the host's binary, run with the host's libraries
# bind-mounted read-only by the template). Containers get addresses on a bridge of the project's own with a private
# range (default sfaomf-lxc0, 10.217.0.1/24), never the host's network.
# Usage: bash scripts/lxc.sh up [BRIDGE [CIDR]]   -> prints the bridge name on its last line
#        bash scripts/lxc.sh down [BRIDGE]        -> removes the bridge (and any container still attached to it)
source "$(dirname "$0")/lib.sh"
action="${1:-up}"
BRIDGE="${2:-sfaomf-lxc0}"
CIDR="${3:-10.217.0.1/24}"
case "$action" in
up)
    apt_install lxc busybox-static dropbear-bin iproute2 openssh-client
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        as_root ip link add "$BRIDGE" type bridge
        as_root ip addr add "$CIDR" dev "$BRIDGE"
    fi
    as_root ip link set "$BRIDGE" up
    echo "$BRIDGE"
    ;;
down)
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        as_root ip link del "$BRIDGE"
    fi
    ;;
*)
    echo "usage: $0 up|down [BRIDGE [CIDR]]" >&2
    exit 2
    ;;
esac
