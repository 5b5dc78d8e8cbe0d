#!/usr/bin/env bash
# Install ragloop as a systemd service on Debian 12 (or any systemd Linux with Python >= 3.11):
#
#   sudo deploy/install.sh [--corpus FILE | --from-qdrant COLLECTION] [--gpu | --cpu] [--torch "PIP ARGS"]
#                          [--no-start] [--prefix DIR]
#
# venv /opt/ragloop/venv, config /etc/ragloop/config.toml, secrets /etc/ragloop/ragloop.env, state
# /var/lib/ragloop, user "ragloop", and /usr/local/bin/ragloop: ragloop as that user with that config.
# The unit starts only once a corpus is loaded (--corpus, --from-qdrant, or later by hand).
# --prefix DIR installs the same files under DIR without creating a user or touching systemd (a throwaway
# root for testing the installer; tests/test_install.py runs it so).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CORPUS=""; QDRANT_COLLECTION=""; DEVICE=auto; TORCH=""; START=1; PREFIX=""
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) CORPUS="$(realpath "$2")"; shift ;;
    --from-qdrant) QDRANT_COLLECTION="$2"; shift ;;
    --gpu) DEVICE=gpu ;;
    --cpu) DEVICE=cpu ;;
    --torch) TORCH="$2"; shift ;;
    --no-start) START=0 ;;
    --prefix) PREFIX="$(realpath -m "$2")"; START=0; shift ;;
    *) usage ;;
  esac
  shift
done
say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# -- prerequisites ---------------------------------------------------------------------------------------
[ -n "$PREFIX" ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0), or with --prefix DIR to try it out"
command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is needed, this is $(python3 -V 2>&1) (Debian 12 ships 3.11)"
python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3 cannot make a virtualenv: apt-get install python3-venv"
if [ -z "$PREFIX" ]; then
  command -v systemctl >/dev/null || die "systemd is needed to run the service (or use --prefix DIR)"
  command -v runuser >/dev/null || die "runuser is missing: apt-get install util-linux"
fi
command -v systemd-analyze >/dev/null || die "systemd-analyze is missing (package systemd): it verifies the unit"
say "prerequisites: $(python3 -V 2>&1), venv, systemd-analyze"

# -- paths (all under PREFIX with --prefix) ----------------------------------------------------------------
OPT="$PREFIX/opt/ragloop"; ETC="$PREFIX/etc/ragloop"; STATE="$PREFIX/var/lib/ragloop"
UNITS="$PREFIX/etc/systemd/system"; BIN="$PREFIX/usr/local/bin"
if [ -z "$PREFIX" ]; then
  id ragloop >/dev/null 2>&1 || useradd --system --home-dir /var/lib/ragloop --shell /usr/sbin/nologin ragloop
  GROUP=ragloop
else
  GROUP="$(id -gn)"  # no user is created in a prefix: the files belong to whoever runs it
fi
install -d -m 0755 "$OPT" "$UNITS" "$BIN"
install -d -m 0750 -g "$GROUP" "$ETC"
if [ -z "$PREFIX" ]; then
  install -d -m 0750 -o ragloop -g ragloop "$STATE"  # the unit's StateDirectory=, made now for the corpus load
else
  install -d -m 0750 "$STATE"
fi

# -- the venv and torch: the CUDA build with a GPU, the CPU wheel without ---------------------------------
if [ "$DEVICE" = auto ]; then
  if [ -e /dev/nvidia0 ] || command -v nvidia-smi >/dev/null; then DEVICE=gpu; else DEVICE=cpu; fi
fi
if [ -z "$TORCH" ]; then
  if [ "$DEVICE" = gpu ]; then
    TORCH="torch==2.13.0"  # PyPI's Linux wheel is the CUDA build
  else
    TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"  # ~200 MB instead of GBs of CUDA
  fi
fi
say "torch for a $DEVICE host: pip install $TORCH"
python3 -m venv "$OPT/venv"
"$OPT/venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086  # TORCH holds pip arguments
"$OPT/venv/bin/pip" install -q --disable-pip-version-check $TORCH
"$OPT/venv/bin/pip" install -q --disable-pip-version-check "$REPO[postgres]"
say "installed $("$OPT/venv/bin/ragloop" --version) into $OPT/venv"

# -- config and secrets ----------------------------------------------------------------------------------
if [ ! -e "$ETC/config.toml" ]; then
  sed -e "s|^state_dir = .*|state_dir = \"/var/lib/ragloop\"|" \
      -e 's|^paths = \[.*\]|paths = ["/var/log/rag/feedback.jsonl*"]|' \
      "$REPO/config.toml" > "$ETC/config.toml"
  [ -z "$PREFIX" ] || sed -i "s|^state_dir = .*|state_dir = \"$STATE\"|" "$ETC/config.toml"
  chgrp "$GROUP" "$ETC/config.toml"; chmod 0640 "$ETC/config.toml"
  say "wrote $ETC/config.toml (feedback logs: /var/log/rag/feedback.jsonl*; store: SQLite in the state dir)"
fi
if [ ! -e "$ETC/ragloop.env" ]; then
  cat > "$ETC/ragloop.env" <<'EOF'
# Secrets and environment for ragloop, read by systemd (EnvironmentFile) and by /usr/local/bin/ragloop.
# Never put them in config.toml. Every variable ragloop reads:
# PostgreSQL store (store.url = "postgresql+psycopg://ragloop@db.internal/ragloop"): its password.
#PGPASSWORD=
# Qdrant server (qdrant.url = "https://qdrant.internal:6333"): its API key; the manifest names this
# variable for the RAG service's client, never the key.
#QDRANT_API_KEY=
# Claude-written questions (synth.enabled): the Anthropic API key.
#ANTHROPIC_API_KEY=
# The unit runs offline (HF_HUB_OFFLINE=1): model bases are folders on disk. To let ragloop download a
# Hugging Face id named in train.embedder.base or train.reranker.base, allow it here:
#HF_HUB_OFFLINE=0
#TRANSFORMERS_OFFLINE=0
# Which GPUs training and encoding may use (a GPU host, with deploy/ragloop-gpu.conf):
#CUDA_VISIBLE_DEVICES=0
EOF
  chmod 0600 "$ETC/ragloop.env"
  say "wrote $ETC/ragloop.env (secrets template, mode 0600)"
fi

# -- the unit, its GPU drop-in, the wrapper ---------------------------------------------------------------
install -m 0644 "$REPO/deploy/ragloop.service" "$UNITS/ragloop.service"
if [ "$DEVICE" = gpu ]; then
  install -d "$UNITS/ragloop.service.d"
  install -m 0644 "$REPO/deploy/ragloop-gpu.conf" "$UNITS/ragloop.service.d/gpu.conf"
fi
cat > "$BIN/ragloop" <<EOF
#!/bin/sh
# ragloop as the service runs it: user ragloop, $ETC/config.toml, the secrets in $ETC/ragloop.env.
# (deploy/install.sh wrote this; \`$OPT/venv/bin/ragloop\` is the bare command.)
set -e
if [ -r "$ETC/ragloop.env" ]; then set -a; . "$ETC/ragloop.env"; set +a; fi
export HF_HUB_OFFLINE="\${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="\${TRANSFORMERS_OFFLINE:-1}"
if [ "\$(id -u)" = 0 ] && [ -z "$PREFIX" ]; then
  exec runuser -u ragloop -- "$OPT/venv/bin/ragloop" -c "$ETC/config.toml" "\$@"
fi
exec "$OPT/venv/bin/ragloop" -c "$ETC/config.toml" "\$@"
EOF
chmod 0755 "$BIN/ragloop"
if [ -z "$PREFIX" ]; then
  systemd-analyze verify "$UNITS/ragloop.service"
else  # the unit as installed names /opt and /etc: verify a copy that names the prefix's files
  install -d "$PREFIX/verify"
  sed -e "s|/opt/ragloop|$OPT|g" -e "s|/etc/ragloop|$ETC|g" "$UNITS/ragloop.service" > "$PREFIX/verify/ragloop.service"
  systemd-analyze verify "$PREFIX/verify/ragloop.service"
fi
say "unit $UNITS/ragloop.service verified by systemd-analyze; wrapper $BIN/ragloop"

# -- the corpus, then the service ------------------------------------------------------------------------
LOADED=0
if [ -n "$CORPUS" ]; then
  if [ -z "$PREFIX" ]; then  # a copy the service user can read, wherever the file was
    install -m 0640 -o ragloop -g ragloop "$CORPUS" "$STATE/corpus-install.jsonl"
    CORPUS="$STATE/corpus-install.jsonl"
  fi
  "$BIN/ragloop" corpus load "$CORPUS"
  say "corpus loaded from $CORPUS"
  LOADED=1
elif [ -n "$QDRANT_COLLECTION" ]; then
  "$BIN/ragloop" corpus sync --from-qdrant "$QDRANT_COLLECTION"
  LOADED=1
fi
if [ -z "$PREFIX" ]; then
  systemctl daemon-reload
  if [ "$START" = 1 ] && [ "$LOADED" = 1 ]; then
    systemctl enable --now ragloop
    systemctl --no-pager status ragloop || true
  fi
fi
cat <<EOF

ragloop is installed. Next:
  ragloop status                            # as the service sees it ($BIN/ragloop)
  \$EDITOR $ETC/config.toml                 # ingest.paths (your RAG service's feedback logs), store.url, qdrant.url
  \$EDITOR $ETC/ragloop.env                 # PGPASSWORD, QDRANT_API_KEY, ANTHROPIC_API_KEY
EOF
if [ "$LOADED" = 0 ]; then
  echo "  ragloop corpus load /path/chunks.jsonl    # or: ragloop corpus sync --from-qdrant COLLECTION"
fi
if [ -z "$PREFIX" ] && { [ "$START" = 0 ] || [ "$LOADED" = 0 ]; }; then
  echo "  systemctl enable --now ragloop            # not started yet: it starts once a corpus is loaded"
fi
echo "  journalctl -u ragloop -f                  # the JSON journal"
