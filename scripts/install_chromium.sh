#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the viewer's browser tests, when they are missing and
# this machine allows it (root, apt-get); otherwise a note, and tests/test_ui.py skips.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ui-test-setup: installing chromium and chromium-driver for the browser tests"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; then
        exit 0
    fi
fi
echo "ui-test-setup: chromium/chromedriver not installed (needs root and apt-get):" \
    "the browser tests (tests/test_ui.py) will be skipped"
exit 0
