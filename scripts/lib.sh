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

# extras_names EXTRAS...: the extras named by arguments like "[test]" or "[a,b]" ("" names none), one a line, sorted.
extras_names() {
    local extras
    for extras in "$@"; do
        extras=${extras#[}
        tr ',' '\n' <<<"${extras%]}"
    done | tr -d ' ' | sed '/^$/d' | LC_ALL=C sort -u
}

# venv_install EXTRAS: create the virtualenv and install the project (editable) with the given extras ("" or
# "[test]"). Skipped when the virtualenv already holds an install made from the same pyproject.toml and setup.py with
# these extras or more (the install is editable: changed Python files need no reinstall): demo.sh's "" after test.sh's
# "[test]" installs nothing. An install keeps the extras installed before (the stamp names them all);
# SFA_OMF_REINSTALL=1 forces it.
venv_install() {
    local stamp="$VENV/.sfa-omf-install" digest had_digest="" had="" had_repo="" names extras
    digest="$(cat "$REPO/pyproject.toml" "$REPO/setup.py" | sha256sum | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && [ -s "$stamp" ]; then  # "DIGEST extras=[...] repo=PATH"
        read -r had_digest had had_repo <"$stamp" || true
        had=${had#extras=}
        had_repo=${had_repo#repo=}
        [[ "$had" =~ ^(\[[A-Za-z0-9_.,-]*\])?$ ]] || had=""
    fi
    if [ "${SFA_OMF_REINSTALL:-0}" != 1 ] && [ "$had_digest" = "$digest" ] && [ "$had_repo" = "$REPO" ] &&
        [ -z "$(LC_ALL=C comm -13 <(extras_names "$had") <(extras_names "$1"))" ] &&
        "$VENV/bin/python" -c "import sfa_omf, lxml, xmlsec" 2>/dev/null; then
        return 0
    fi
    names=$(extras_names "$had" "$1" | paste -sd, -)
    extras=${names:+[$names]}
    python_ready
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    echo "== installing sfa-omf$extras into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -m pip install -q -e "$REPO$extras" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import sfa_omf, lxml, xmlsec" # fail here, clearly, if the install did not work
    echo "$digest extras=$extras repo=$REPO" >"$stamp"
}
