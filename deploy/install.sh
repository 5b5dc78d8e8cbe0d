#!/usr/bin/env bash
# Install ragloop as a systemd service:
#   sudo deploy/install.sh [--gpu] [--no-start]
# venv in /opt/ragloop/venv, config in /etc/ragloop, state in /var/lib/ragloop, user "ragloop".
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
GPU=0; START=1
for a in "$@"; do
  case "$a" in
    --gpu) GPU=1 ;;
    --no-start) START=0 ;;
    *) echo "usage: $0 [--gpu] [--no-start]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 2; }

id ragloop >/dev/null 2>&1 || useradd --system --home-dir /var/lib/ragloop --shell /usr/sbin/nologin ragloop
install -d -m 0755 /opt/ragloop
python3 -m venv /opt/ragloop/venv
/opt/ragloop/venv/bin/pip install -q --upgrade pip
# Exactly this pin: on a GPU host it brings the CUDA build, elsewhere the CPU wheel.
/opt/ragloop/venv/bin/pip install -q torch==2.13.0
/opt/ragloop/venv/bin/pip install -q "$REPO[postgres]"
install -m 0644 "$REPO/README.md" /opt/ragloop/README.md

install -d -m 0750 -g ragloop /etc/ragloop
if [ ! -e /etc/ragloop/config.toml ]; then
  sed -e 's|^state_dir = .*|state_dir = "/var/lib/ragloop"|' \
      -e 's|^paths = \["bench/data/examples/feedback.jsonl"\]|paths = ["/var/log/rag/feedback.jsonl*"]|' \
      "$REPO/config.toml" > /etc/ragloop/config.toml
  chgrp ragloop /etc/ragloop/config.toml; chmod 0640 /etc/ragloop/config.toml
fi
if [ ! -e /etc/ragloop/ragloop.env ]; then
  printf '# Secrets for ragloop (read by systemd, never logged)\n#ANTHROPIC_API_KEY=\n#QDRANT_API_KEY=\n' > /etc/ragloop/ragloop.env
  chmod 0600 /etc/ragloop/ragloop.env
fi

install -m 0644 "$REPO/deploy/ragloop.service" /etc/systemd/system/ragloop.service
if [ "$GPU" = 1 ]; then
  install -d /etc/systemd/system/ragloop.service.d
  install -m 0644 "$REPO/deploy/ragloop-gpu.conf" /etc/systemd/system/ragloop.service.d/gpu.conf
fi
systemctl daemon-reload
systemd-analyze verify /etc/systemd/system/ragloop.service
if [ "$START" = 1 ]; then
  systemctl enable --now ragloop
  systemctl --no-pager status ragloop || true
fi
echo "installed: edit /etc/ragloop/config.toml (corpus, log paths), then: ragloop corpus load ...; systemctl restart ragloop"
