#!/usr/bin/env bash
# Set-up on a fresh machine, idempotent and quick when nothing changed:
# system packages (FFCV's build needs, Chromium for the report test), then .venv at the repository root
# with repsub installed in editable mode and its test extras. Sourced by scripts/demo and scripts/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(pkg-config libturbojpeg0-dev libopencv-dev chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
# Reinstall only when the project's requirements changed since the last set-up.
stamp=".venv/.repsub-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing repsub and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch and torchvision pinned exactly: these builds install from this machine's disk.
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.repsub-setup-*
  touch "$stamp"
fi
