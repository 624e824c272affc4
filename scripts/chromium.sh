#!/usr/bin/env bash
# Install Debian's chromium for the web calendar's browser tests (Playwright's Python package drives it; Playwright's
# own browser download is not used). Prints the browser's path on its last line. Usage: bash scripts/chromium.sh
source "$(dirname "$0")/lib.sh"
apt_install chromium fonts-dejavu-core
browser="$(command -v chromium)"
"$browser" --headless --no-sandbox --disable-gpu --version >/dev/null 2>&1 || "$browser" --version >/dev/null
echo "$browser"
