#!/usr/bin/env bash
# Make sure Debian's Chromium (driven by Playwright in the browser tests) and a CJK font (for the
# Chinese interface) are installed.
set -euo pipefail
if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "wqy\|noto.*cjk"; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian's chromium for the browser tests..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null
  exit 0
fi
echo "chromium is missing: install Debian's 'chromium' package (/usr/bin/chromium) for the browser tests" >&2
exit 1
