# Shared by scripts/*.sh: Debian packages and the project's virtualenv. Source it; do not run it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SFA_OMF_VENV:-$REPO/.venv}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

# apt_install PKG...: install the Debian packages that are missing (apt-get update only when something is).
apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# python_ready: a python3 (3.11+) that can make virtualenvs.
python_ready() {
    if ! command -v python3 >/dev/null || ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        apt_install python3 python3-venv python3-dev
    fi
}

# venv_install EXTRAS: create the virtualenv and install the project (editable) with the given extras. Skipped when
# the virtualenv already holds an install made from the same pyproject.toml and setup.py with the same extras (the
# install is editable: changed Python files need no reinstall); SFA_OMF_REINSTALL=1 forces it.
venv_install() {
    local stamp="$VENV/.sfa-omf-install" wanted
    wanted="$(cat "$REPO/pyproject.toml" "$REPO/setup.py" | sha256sum | cut -d' ' -f1) extras=$1 repo=$REPO"
    if [ "${SFA_OMF_REINSTALL:-0}" != 1 ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] &&
        "$VENV/bin/python" -c "import sfa_omf, lxml, xmlsec" 2>/dev/null; then
        return 0
    fi
    python_ready
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    echo "== installing sfa-omf$1 into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -m pip install -q -e "$REPO$1" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import sfa_omf, lxml, xmlsec" # fail here, clearly, if the install did not work
    echo "$wanted" >"$stamp"
}
