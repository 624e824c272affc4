#!/usr/bin/env bash
# A real OAR 2.5.9 (Debian 12 packages) on this host, for the OAR backend's tests, CI and demos: the server
# (Almighty) on the PostgreSQL that scripts/postgres.sh runs, fake nodes node1..nodeN (and dnode1..dnodeM for deploy
# jobs), execution nodes that really run jobs (127.0.0.2, 127.0.0.3: exec=YES, OAR's node sshd on port 6667), Unix
# users to submit as, and the REST API (apache2 + suexec, plain CGI) on 127.0.0.1:6668. Needs root (or sudo); no systemd: daemons are started
# by hand and stopped by their PID.
#
# Usage: bash scripts/oar.sh [up|down|stop-api|start-api|alive|status]
#   up         install, configure and start (default). Idempotent; quick when already up. Last line: the API URL.
#   down       stop apache2 and Almighty (PostgreSQL is left alone: other tests use it)
#   stop-api   stop apache2 only ("OAR's API is down", for tests); start-api starts it again
#   alive      set every node back to Alive
#   status     what runs; exit status 1 when something is down
# Environment: OAR_NODES [10], OAR_DEPLOY_NODES [2] (dnode1.., deploy=YES), OAR_EXEC_NODES ["127.0.0.2 127.0.0.3"]
#   (loopback addresses of their own, exec=YES: noop and deploy jobs never go there, every other job only there), OAR_USERS ["alice bob"], OAR_API_PORT [6668], OAR_DB_PASSWORD [oar-test],
#   OAR_DB_RO_PASSWORD [oar-test-ro].
#
# The API trusts the X-Remote-Ident header completely (API_TRUST_IDENT=1: whoever can reach it can act as any
# user), which is why everything here listens on 127.0.0.1 only. This is a test rig, not a production OAR.
source "$(dirname "$0")/lib.sh"

OAR_NODES="${OAR_NODES:-10}"
OAR_DEPLOY_NODES="${OAR_DEPLOY_NODES:-2}"
OAR_EXEC_NODES="${OAR_EXEC_NODES:-127.0.0.2 127.0.0.3}"
OAR_USERS="${OAR_USERS:-alice bob}"
OAR_API_PORT="${OAR_API_PORT:-6668}"
OAR_DB_PASSWORD="${OAR_DB_PASSWORD:-oar-test}"
OAR_DB_RO_PASSWORD="${OAR_DB_RO_PASSWORD:-oar-test-ro}"
OAR_CONF=/etc/oar/oar.conf
OAR_PIDFILE=/var/run/oar-server.pid
ALMIGHTY_PORT=6666 # oar.conf's SERVER_PORT, as the package writes it
ALMIGHTY_FIREWALL=sfa_omf_almighty # the nftables table that keeps that port to loopback
APACHE_PIDFILE=/var/run/apache2/apache2.pid
APACHE_SITE=/etc/apache2/conf-available/sfa-omf-oarapi.conf
NODE_SSHD_PIDFILE=/var/run/oar-node_sshd.pid # oar-node's own name for it
# The node side of lease containers (docs/operators.md): the command jobs run through sudo, its sudo rule, and the
# epilogue OAR runs on a job's first node when the job ends (killed or not).
NODE_COMMAND=/usr/local/sbin/sfa-omf-lease-containers
NODE_SUDOERS=/etc/sudoers.d/sfa-omf-lease-containers
NODE_EPILOGUE=/usr/local/lib/sfa-omf/oar-epilogue
NODE_REAP_LOG=/var/log/sfa-omf-lease-containers.log  # the epilogue's reaps, appended (docs/operators.md)
NODE_SIGNERS=/etc/sfa-omf/plan-signers  # the aggregate keys whose plans and actions the node command trusts
STATE=/var/lib/sfa-omf-oar # checksums of the configuration each daemon was started with
RIG_PLAN_KEY=$STATE/plan-signing.key  # the tests' aggregates sign their plans with it (tests/testbed/oar/conftest.py)
API_URL="http://127.0.0.1:$OAR_API_PORT/oarapi"

# Progress goes to stderr: stdout carries only the API URL, so `up | tail -n 1` is the URL.
say() { echo "oar.sh: $*" >&2; }
# running PIDFILE: the daemon it names is alive (/proc, not kill -0: that needs root for root's processes). The
# process must also be that daemon: a PID file outlives its process when the machine stops (or is restored from a
# snapshot), and its PID may then be another program's, which would pass for the daemon and be killed by `down`.
running() {
    local pid mark command_line
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    case $1 in
    "$OAR_PIDFILE") mark=/usr/lib/oar/Almighty ;;
    "$APACHE_PIDFILE") mark=/usr/sbin/apache2 ;;
    "$NODE_SSHD_PIDFILE") mark="PidFile=$NODE_SSHD_PIDFILE" ;; # node_up puts it on sshd's command line
    *) return 1 ;;
    esac
    # 2>/dev/null before the < redirection: redirections apply left to right, so a vanished PID stays quiet.
    command_line=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $command_line == *"$mark"* ]]
}
api_answers() { curl -fsS -m 5 -o /dev/null "$API_URL/version.json" 2>/dev/null; }

# stop_pid NAME PIDFILE: SIGTERM the process recorded in PIDFILE and wait (bounded) until it has exited.
stop_pid() {
    local name=$1 pidfile=$2 pid
    if running "$pidfile"; then
        pid=$(cat "$pidfile")
        say "stopping $name (pid $pid)"
        as_root kill "$pid"
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        if [ -d "/proc/$pid" ]; then
            say "$name (pid $pid) did not stop within 10 s"
            return 1
        fi
    fi
    as_root rm -f "$pidfile"
}

# --- PostgreSQL: the cluster scripts/postgres.sh uses (the first one pg_lsclusters lists) -------------------------
PG_PORT=""
postgres_up() {
    apt_install postgresql >&2
    local cluster version name status
    cluster=$(pg_lsclusters -h | head -n 1)
    if [ -z "$cluster" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        as_root pg_createcluster "$version" main >/dev/null
        cluster=$(pg_lsclusters -h | head -n 1)
    fi
    read -r version name PG_PORT status _ <<<"$cluster"
    if [ "$status" != online ]; then
        say "starting PostgreSQL $version/$name"
        as_root pg_ctlcluster "$version" "$name" start
    fi
}
# psql as the PostgreSQL superuser, on the cluster's port; extra arguments go to psql.
psql_admin() { (cd / && as_root su postgres -c "psql -p $PG_PORT -v ON_ERROR_STOP=1 -qtA $*"); }

# --- oar.conf -----------------------------------------------------------------------------------------------------
# oar.conf is readable by oar and root only.
conf_has() { as_root grep -q "$1" "$OAR_CONF"; }
# conf_set KEY VALUE: KEY="VALUE", replacing the active line(s), else the first commented-out one, else appended.
# The file is only rewritten when the value changes, so its checksum says whether Almighty must restart.
conf_set() {
    local key=$1 value=$2
    conf_has "^$key=\"$value\"\$" && return 0
    if conf_has "^$key="; then
        as_root sed -i "s|^$key=.*|$key=\"$value\"|" "$OAR_CONF"
    elif conf_has "^#$key="; then
        as_root sed -i "0,/^#$key=.*/s||$key=\"$value\"|" "$OAR_CONF"
    else
        echo "$key=\"$value\"" | as_root tee -a "$OAR_CONF" >/dev/null
    fi
}
configure_oar() {
    conf_set DB_TYPE Pg
    conf_set DB_HOSTNAME 127.0.0.1
    conf_set DB_PORT "$PG_PORT"
    conf_set DB_BASE_PASSWD "$OAR_DB_PASSWORD"
    conf_set DB_BASE_PASSWD_RO "$OAR_DB_RO_PASSWORD"
    conf_set SERVER_HOSTNAME localhost
    # The nodes are fake: sentinelle.pl would ssh to them and mark them Suspected within seconds. /bin/true says
    # "every node answers".
    conf_has '^PINGCHECKER_SENTINELLE_SCRIPT_COMMAND=' &&
        as_root sed -i 's|^PINGCHECKER_SENTINELLE_SCRIPT_COMMAND=|#&|' "$OAR_CONF"
    conf_set PINGCHECKER_GENERIC_COMMAND /bin/true
    # A job holds the closed interval [start, start + walltime] plus this margin (shipped: 60 s). With 0, a job of
    # walltime duration - 1 s ends right before the next slot starts: back-to-back reservations both pass.
    conf_set SCHEDULER_JOB_SECURITY_TIME 0
    # Shipped 5 s: a submission arriving soon after a scheduler run then waits ~10 s instead of ~1 s.
    conf_set SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 0
    # The API takes the user from the X-Remote-Ident header (loopback only, see the top of this file).
    conf_set API_TRUST_IDENT 1
    # Jobs on the exec nodes really run. OAR's job resource manager (cgroups/cpusets) needs a cgroup v1 cpuset
    # hierarchy it can mount, which a container (and many current hosts, cgroup v2 only) does not give: without
    # this field bipbip skips it and runs oarexec directly. The cost: no per-job cpuset confinement nor oarsh
    # isolation between jobs of one node; oarexec still kills the job's processes at its end.
    conf_has '^JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD=' &&
        as_root sed -i 's|^JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD=|#&|' "$OAR_CONF"
    # Run by oarexec (as oar) on the job's first node after the job ended or was killed: it destroys the lease
    # containers whose job command is gone (a SIGKILLed command cannot clean up itself).
    conf_set EPILOGUE_EXEC_FILE "$NODE_EPILOGUE"
}

# --- OAR database, admission rules, users, resources ----------------------------------------------------------------
database_up() {
    if ! as_root oar-database --check >/dev/null 2>&1; then
        say "creating the OAR database"
        as_root oar-database --create --db-is-local -y >/dev/null
    fi
    # Roles left by an earlier bring-up may carry other passwords: make them match oar.conf.
    psql_admin "-c \"ALTER ROLE oar PASSWORD '$OAR_DB_PASSWORD'\" -c \"ALTER ROLE oar_ro PASSWORD '$OAR_DB_RO_PASSWORD'\""
    # The exec nodes really run jobs, the fake nodes cannot: noop and deploy jobs go only where exec='NO' (the
    # column defaults to it), every other job only where exec='YES'.
    {
        printf '%s' "INSERT INTO admission_rules (priority, enabled, rule) SELECT 0, 'YES', \$rule\$"
        exec_rule
        echo "\$rule\$ WHERE NOT EXISTS (SELECT 1 FROM admission_rules WHERE rule LIKE '%# sfa-omf exec nodes%');"
    } | psql_admin "-d oar"
    # The shipped rule caps each user at 2 waiting advance reservations; the aggregate books many per user.
    psql_admin "-d oar -c \"UPDATE admission_rules SET enabled = 'NO' WHERE enabled = 'YES' AND
        rule LIKE '%Limit the number of advance reservations per user%'\""
}

users_up() {
    # OAR only accepts real Unix accounts with a home directory (and refuses root and oar).
    local user
    for user in $OAR_USERS; do
        id "$user" >/dev/null 2>&1 || as_root useradd --create-home --shell /bin/bash "$user"
    done
}

# The admission rule that keeps real jobs on exec nodes and noop/deploy jobs off them (Perl, run by oarsub).
exec_rule() {
    cat <<'EOF'
# sfa-omf exec nodes (scripts/oar.sh): only exec=YES resources run jobs; noop and deploy jobs never go there.
my $exec_wanted = (grep(/^(noop|deploy)$/, @{$type_list})) ? "exec = 'NO'" : "exec = 'YES'";
if ($jobproperties ne ""){
    $jobproperties = "($jobproperties) AND $exec_wanted";
}else{
    $jobproperties = $exec_wanted;
}
EOF
}

resources_up() {
    local properties existing i
    properties=$(as_root oarproperty -l)
    grep -qx host <<<"$properties" || as_root oarproperty -q -a host -c
    grep -qx cpu <<<"$properties" || as_root oarproperty -q -a cpu
    grep -qx core <<<"$properties" || as_root oarproperty -q -a core
    # Agents' nodes (sfa_omf/testbed/oar/agent_nodes.py) carry these, as OAR's desktop-computing seed planned.
    grep -qx local_ip_address <<<"$properties" || as_root oarproperty -q -a local_ip_address -c
    grep -qx vpn_number <<<"$properties" || as_root oarproperty -q -a vpn_number
    grep -qx exec <<<"$properties" || as_root oarproperty -q -a exec -c
    # Like deploy: every resource (fake nodes, agents' nodes added later) is NO unless made an exec node. Every
    # time, not only when the property is made: a run that stopped between the two left the default unset.
    psql_admin "-d oar -c \"ALTER TABLE resources ALTER COLUMN exec SET DEFAULT 'NO'\" \
        -c \"UPDATE resources SET exec = 'NO' WHERE exec IS NULL\""
    existing=$(as_root oarnodes -l 2>/dev/null || true)
    # Execution nodes: loopback addresses of their own (Linux answers on all of 127/8), reached by OAR's server
    # with `ssh -p 6667` as oar like any node.
    for i in $OAR_EXEC_NODES; do
        if ! grep -qx "$i" <<<"$existing"; then
            as_root oarnodesetting -a -h "$i" -p "host=$i" -p "cpu=2${i##*.}" -p "core=2${i##*.}" -p "exec=YES" >/dev/null
        fi
    done
    for i in $(seq 1 "$OAR_NODES"); do
        if ! grep -qx "node$i" <<<"$existing"; then
            as_root oarnodesetting -a -h "node$i" -p "host=node$i" -p "cpu=$i" -p "core=$i" >/dev/null
        fi
    done
    # Nodes for deploy jobs (image-per-slot provisioning): OAR gives "-t deploy" jobs only resources with
    # deploy=YES, and every other job only resources with deploy=NO, so these are apart from node1..nodeN.
    for i in $(seq 1 "$OAR_DEPLOY_NODES"); do
        if ! grep -qx "dnode$i" <<<"$existing"; then
            as_root oarnodesetting -a -h "dnode$i" -p "host=dnode$i" -p "cpu=$((1000 + i))" -p "core=$((1000 + i))" \
                -p "deploy=YES" >/dev/null
        fi
    done
}

# --- the execution nodes' side: OAR's node sshd, the lease containers command, its sudo rule, the epilogue ------
node_up() {
    # The oar user's key pair, with which the server reaches every node (oar-server's setup makes it; a real
    # site's nodes receive its public key in ~oar/.ssh/authorized_keys, with OAR_KEY=1 set for oarsh_shell).
    as_root su oar -s /bin/sh -c 'mkdir -p ~/.ssh && { test -s ~/.ssh/id_rsa || ssh-keygen -q -t rsa -N "" -f ~/.ssh/id_rsa; } &&
        { grep -qF "$(cut -d" " -f2 ~/.ssh/id_rsa.pub)" ~/.ssh/authorized_keys 2>/dev/null ||
          printf "environment=\"OAR_KEY=1\" %s\n" "$(cat ~/.ssh/id_rsa.pub)" >>~/.ssh/authorized_keys; }'
    as_root mkdir -p /run/sshd
    local listen="127.0.0.1 $OAR_EXEC_NODES" options=() address checksum
    # Loopback only: the server's address (deploy and cosystem jobs) and the exec nodes'.
    for address in $listen; do options+=(-o "ListenAddress=$address"); done
    checksum=$(echo "$listen" | cat - /etc/oar/sshd_config | md5sum)
    if running "$NODE_SSHD_PIDFILE" && [ "$checksum" != "$(cat "$STATE/node-sshd.md5" 2>/dev/null)" ]; then
        stop_pid "OAR's node sshd" "$NODE_SSHD_PIDFILE"
    fi
    if ! running "$NODE_SSHD_PIDFILE"; then
        say "starting OAR's node sshd on port 6667 ($listen)"
        as_root /usr/sbin/sshd -f /etc/oar/sshd_config -o "PidFile=$NODE_SSHD_PIDFILE" "${options[@]}"
        echo "$checksum" | as_root tee "$STATE/node-sshd.md5" >/dev/null
    fi
    # The node command: the console script of this checkout's virtualenv (an operator points it at the installed
    # package). Never `python -m` under sudo: it puts the caller's working directory first on sys.path, so any user
    # could have root import a package of theirs.
    as_root mkdir -p "$(dirname "$NODE_EPILOGUE")"
    install_file "$NODE_COMMAND" 755 <<EOF
#!/bin/sh
# Written by sfa-omf scripts/oar.sh: the node side of lease containers (docs/images-and-instances.md).
exec "$VENV/bin/sfa-omf-lease-containers" "\$@"
EOF
    # The node command runs only plans and actions signed by a key listed here: the rig's aggregates use one key.
    as_root mkdir -p "$(dirname "$NODE_SIGNERS")" "$STATE"
    as_root "$VENV/bin/sfa-omf" instance signing-key --key "$RIG_PLAN_KEY" | install_file "$NODE_SIGNERS" 644
    # Job commands run as the job's user: they may start lease containers as root, nothing else. The command itself
    # trusts only plans in root-owned directories, written for that very user by the aggregate.
    # Checked before it is moved into place (sudo ignores sudoers.d names with a dot, like the .new file): a broken
    # rule never reaches sudo.
    install_file "$NODE_SUDOERS" 440 visudo -cq -f <<EOF
# Written by sfa-omf scripts/oar.sh: OAR job commands create the lease's containers as root (docs/operators.md).
# OAR_JOB_ID kept (sudo clears the environment): the run records its job, which the job's epilogue reaps first.
Defaults!$NODE_COMMAND env_keep += "OAR_JOB_ID"
ALL ALL=(root) NOPASSWD: $NODE_COMMAND run *
EOF
    install_file "$NODE_EPILOGUE" 755 <<EOF
#!/bin/sh
# Written by sfa-omf scripts/oar.sh: OAR's node epilogue (run as oar by oarexec, with JOB_ID USER NODE_FILE). It
# destroys the lease containers whose job command is gone, as root through OAR's own oardodo.
# The job's run first (reap JOB_ID); a node command older than that (exit 2, usage) sweeps every dead run.
# What reap says, and its exit status, are appended to $NODE_REAP_LOG (docs/operators.md).
{
    echo "\$(date -u +%Y-%m-%dT%H:%M:%SZ) job \$1: reap"
    /usr/lib/oar/oardodo/oardodo $NODE_COMMAND reap "\$1" 2>&1
    status=\$?
    if [ "\$status" = 2 ]; then
        echo "reap \$1: exit status 2: sweeping every dead run"
        /usr/lib/oar/oardodo/oardodo $NODE_COMMAND reap 2>&1
        status=\$?
    fi
    echo "\$(date -u +%Y-%m-%dT%H:%M:%SZ) job \$1: reap exit status \$status"
} | /usr/lib/oar/oardodo/oardodo /usr/bin/tee -a $NODE_REAP_LOG >/dev/null
exit 0
EOF
}

# install_file PATH MODE [CHECK...] < CONTENT: write PATH (as root) only when its content changes; with CHECK, the
# new content is moved into place only if `CHECK PATH.new` accepts it.
install_file() {
    local path=$1 mode=$2
    shift 2
    as_root tee "$path.new" >/dev/null
    as_root chmod "$mode" "$path.new"
    if [ $# -gt 0 ] && ! as_root "$@" "$path.new"; then
        as_root rm -f "$path.new"
        echo "oar.sh: $path: the new content was refused by $*; the old file is kept" >&2
        return 1
    fi
    if cmp -s "$path.new" "$path"; then as_root rm -f "$path.new"; else as_root mv "$path.new" "$path"; fi
    as_root chmod "$mode" "$path"
}

# --- daemons ------------------------------------------------------------------------------------------------------
# Almighty listens on every address (OAR 2.5.9 has no setting for it): a firewall table refuses its port to any
# packet that does not come from loopback, so only this machine reaches it. Idempotent; `down` removes the table.
almighty_loopback_only() {
    as_root nft -f - <<EOF || {
table inet $ALMIGHTY_FIREWALL
delete table inet $ALMIGHTY_FIREWALL
table inet $ALMIGHTY_FIREWALL {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname != "lo" tcp dport $ALMIGHTY_PORT reject with tcp reset
    }
}
EOF
        say "could not load the nftables table $ALMIGHTY_FIREWALL (nft needs root and CAP_NET_ADMIN): Almighty, which" \
            "listens on every address, is not started"
        return 1
    }
}

almighty_up() {
    local checksum
    almighty_loopback_only
    checksum=$(as_root cat "$OAR_CONF" | md5sum)
    # Almighty reads oar.conf once, at start: restart it when the file changed since.
    if running "$OAR_PIDFILE" && [ "$checksum" != "$(cat "$STATE/oar.conf.md5" 2>/dev/null)" ]; then
        say "oar.conf changed: restarting Almighty"
        stop_pid Almighty "$OAR_PIDFILE"
    fi
    if ! running "$OAR_PIDFILE"; then
        say "starting Almighty"
        # /usr/sbin/oar-server daemonizes Almighty and writes its PID file (the init script only wraps it).
        as_root /usr/sbin/oar-server </dev/null >/dev/null 2>&1
        echo "$checksum" | as_root tee "$STATE/oar.conf.md5" >/dev/null
        for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$ALMIGHTY_PORT) 2>/dev/null && return 0; sleep 0.1; done
        say "Almighty did not open port $ALMIGHTY_PORT (see /var/log/oar.log)"
        return 1
    fi
}

configure_apache() {
    # oarapi.cgi is a setuid-style wrapper that only works when started as user oar: suexec runs it so, provided
    # /usr/lib/cgi-bin is suexec's document root (first line of this file). Debian 12 has no mod_fastcgi: plain CGI.
    [ "$(head -n 1 /etc/apache2/suexec/www-data)" = /usr/lib/cgi-bin ] ||
        as_root sed -i '1s|.*|/usr/lib/cgi-bin|' /etc/apache2/suexec/www-data
    # Our own small virtual host instead of the package's example (which listens on every address).
    as_root tee "$APACHE_SITE.new" >/dev/null <<EOF
# Written by sfa-omf scripts/oar.sh: the OAR REST API for tests, on loopback only.
ServerName localhost
Listen 127.0.0.1:$OAR_API_PORT
<VirtualHost 127.0.0.1:$OAR_API_PORT>
    ScriptAlias /oarapi /usr/lib/cgi-bin/oarapi/oarapi.cgi
    SuexecUserGroup oar oar
    <Directory /usr/lib/cgi-bin/oarapi>
        Options +ExecCGI -MultiViews +FollowSymLinks
        SetEnv OARCONFFILE $OAR_CONF
        Require local
    </Directory>
</VirtualHost>
EOF
    if cmp -s "$APACHE_SITE.new" "$APACHE_SITE"; then as_root rm -f "$APACHE_SITE.new"; else
        as_root mv "$APACHE_SITE.new" "$APACHE_SITE"; fi
    # The default site too, on loopback.
    grep -q '^Listen 80$' /etc/apache2/ports.conf && as_root sed -i 's|^Listen 80$|Listen 127.0.0.1:80|' /etc/apache2/ports.conf
    grep -qE '^\s*Listen 443$' /etc/apache2/ports.conf &&
        as_root sed -i -E 's|^(\s*)Listen 443$|\1Listen 127.0.0.1:443|' /etc/apache2/ports.conf
    [ -e /etc/apache2/mods-enabled/suexec.load ] && [ -e /etc/apache2/mods-enabled/cgid.load ] ||
        as_root a2enmod -q suexec cgid >/dev/null
    [ -e /etc/apache2/conf-enabled/oar-restful-api.conf ] && as_root a2disconf -q oar-restful-api >/dev/null
    [ -e /etc/apache2/conf-enabled/sfa-omf-oarapi.conf ] || as_root a2enconf -q sfa-omf-oarapi >/dev/null
    as_root apache2ctl configtest 2>/dev/null || { as_root apache2ctl configtest; return 1; }
}

# A fingerprint of everything that configures apache2, to know whether a running one must restart.
apache_checksum() {
    (cd /etc/apache2 && find . -path ./sites-available -prune -o \( -type f -o -type l \) -printf '%p %l\n' |
        sort && cat ports.conf suexec/www-data "$APACHE_SITE") | md5sum
}

apache_up() {
    local checksum
    checksum=$(apache_checksum)
    # A reload cannot move "Listen 80" to "Listen 127.0.0.1:80" (the bind fails): restart instead.
    if running "$APACHE_PIDFILE" && [ "$checksum" != "$(cat "$STATE/apache2.md5" 2>/dev/null)" ]; then
        say "apache2 configuration changed: restarting it"
        stop_pid apache2 "$APACHE_PIDFILE"
    fi
    if ! running "$APACHE_PIDFILE"; then
        say "starting apache2"
        as_root rm -f "$APACHE_PIDFILE"
        # (its output goes to a log, not to our stdout: `up | tail -n 1` must not wait for apache's descriptors)
        as_root sh -c 'exec apache2ctl start </dev/null >>"$1" 2>&1' sh "$STATE/apache2ctl.log" || {
            tail -n 20 "$STATE/apache2ctl.log" >&2
            return 1
        }
        echo "$checksum" | as_root tee "$STATE/apache2.md5" >/dev/null
    fi
    for _ in $(seq 100); do api_answers && return 0; sleep 0.2; done
    say "the OAR API does not answer at $API_URL (see /var/log/apache2/error.log)"
    return 1
}

# Every node Alive (a reservation that starts on a fake node may turn it Suspected), then wait until OAR says so.
nodes_alive() {
    local states
    as_root oarnodesetting --sql "state <> 'Alive'" -s Alive >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        # oarnodes -s: a line per host, then "    <resource id> : <state>" for each of its resources
        states=$(as_root oarnodes -s 2>/dev/null) || states=""
        if grep -q ' : ' <<<"$states" && ! grep ' : ' <<<"$states" | grep -qv ': Alive$'; then return 0; fi
        sleep 0.2
    done
    say "some nodes are not Alive:"
    as_root oarnodes -s >&2
    return 1
}

up() {
    local started=$SECONDS
    apt_install oar-server oar-server-pgsql oar-user oar-user-pgsql oar-restful-api apache2 apache2-suexec-custom curl \
        oar-node openssh-server sudo nftables >&2
    as_root mkdir -p "$STATE"
    postgres_up
    configure_oar
    database_up
    users_up
    resources_up
    node_up
    almighty_up
    configure_apache
    apache_up
    nodes_alive
    say "up in $((SECONDS - started)) s: $(as_root oarnodes -l | wc -l) nodes, users: $OAR_USERS"
    echo "$API_URL"
}

status() {
    local ok=0
    pg_lsclusters
    if running "$OAR_PIDFILE"; then echo "Almighty: running (pid $(cat "$OAR_PIDFILE"))"; else
        echo "Almighty: stopped"; ok=1; fi
    if running "$APACHE_PIDFILE"; then echo "apache2: running (pid $(cat "$APACHE_PIDFILE"))"; else
        echo "apache2: stopped"; ok=1; fi
    if running "$NODE_SSHD_PIDFILE"; then echo "node sshd: running (pid $(cat "$NODE_SSHD_PIDFILE"))"; else
        echo "node sshd: stopped"; ok=1; fi
    if api_answers; then echo "API: $API_URL answers"; else echo "API: $API_URL does not answer"; ok=1; fi
    # oarnodes -s prints each host, then "    <resource id> : <state>" lines
    as_root oarnodes -s 2>/dev/null | awk '/^[^ ]/ {host = $1} / : / {print host ": " $3 " (resource " $1 ")"}' | sort -V || true
    return $ok
}

case "${1:-up}" in
up) up ;;
down)
    stop_pid apache2 "$APACHE_PIDFILE"
    # Almighty's main process stops its children (appendice, bipbip commander, ...) itself on SIGTERM.
    stop_pid Almighty "$OAR_PIDFILE"
    stop_pid "OAR's node sshd" "$NODE_SSHD_PIDFILE"
    as_root nft delete table inet "$ALMIGHTY_FIREWALL" 2>/dev/null || true # (absent: nothing to remove)
    ;;
stop-api) stop_pid apache2 "$APACHE_PIDFILE" ;;
start-api)
    as_root mkdir -p "$STATE"
    apache_up
    ;;
alive) nodes_alive ;;
status) status ;;
*)
    echo "usage: $0 [up|down|stop-api|start-api|alive|status]" >&2
    exit 2
    ;;
esac
