#!/usr/bin/env bash
# Install and start a local RabbitMQ (Debian package rabbitmq-server) listening on 127.0.0.1 only (AMQP, Erlang
# distribution and epmd), with a virtual host and a user for the FRCP tests. Prints the AMQP URL on its last line.
# Usage: bash scripts/rabbitmq.sh [up [VHOST]|drop VHOST|down|status]   (up is the default; VHOST: sfaomf)
# A test run takes a virtual host of its own (test.sh: one per run, dropped at its end): FRCP topics are named after
# users and nodes (user-ann_...), so two runs on one broker in one virtual host would read each other's messages.
source "$(dirname "$0")/lib.sh"
ACTION="${1:-up}"
VHOST="${2:-sfaomf}"
USER_NAME=sfaomf
PORT="${SFA_OMF_RABBITMQ_PORT:-5672}"
NODE=rabbit@localhost
# Every listener on loopback: AMQP, the Erlang distribution port, and epmd (the Erlang port mapper).
export RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$PORT"
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

ctl() { as_root rabbitmqctl -q -n "$NODE" "$@"; }
running() { ctl status >/dev/null 2>&1; }

case "$ACTION" in
up)
    apt_install rabbitmq-server
    if ! running; then
        echo "== starting RabbitMQ on 127.0.0.1:$PORT" >&2
        # Debian's service is not started here (no init system in containers); run the broker as its own user.
        as_root env RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$PORT" \
            ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS" \
            su rabbitmq -s /bin/sh -c "rabbitmq-server -detached" >&2
        for _ in $(seq 1 60); do
            running && break
            sleep 1
        done
        running || { echo "RabbitMQ did not start; see /var/log/rabbitmq/" >&2; exit 1; }
        ctl await_startup >/dev/null
    fi
    ctl list_vhosts | grep -qx "$VHOST" || ctl add_vhost "$VHOST" >/dev/null
    ctl list_users | awk '{print $1}' | grep -qx "$USER_NAME" || ctl add_user "$USER_NAME" "$USER_NAME" >/dev/null
    ctl set_permissions -p "$VHOST" "$USER_NAME" ".*" ".*" ".*" >/dev/null
    echo "amqp://$USER_NAME:$USER_NAME@127.0.0.1:$PORT/$VHOST"
    ;;
drop)
    # A test run's virtual host, with its exchanges and queues (gone already, or the broker down: done too).
    if [ -n "${2:-}" ] && running && ctl list_vhosts | grep -qx "$VHOST"; then ctl delete_vhost "$VHOST" >/dev/null; fi
    ;;
down)
    # Already stopped is done too: test.sh --down goes on to the next service.
    if running; then ctl stop; fi
    ;;
status)
    running && echo "RabbitMQ is running on 127.0.0.1:$PORT" || { echo "RabbitMQ is not running"; exit 1; }
    ;;
*)
    echo "usage: $0 [up [VHOST]|drop VHOST|down|status]" >&2
    exit 2
    ;;
esac
