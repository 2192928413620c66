#!/usr/bin/env bash
# Installs the competing servers used by Tandem's benchmarks into benches/peers/:
#   - node_modules/ (@y/websocket-server, @hocuspocus/server, ...) from package-lock.json
#   - .cargo/bin/y-sweet (cargo install; compiles for several minutes the first time)
# Idempotent and runnable from any working directory. Re-running is cheap when
# everything is already in place.
#
# Env:
#   Y_SWEET_VERSION  crate version to install (default 0.9.1, the one PROTOCOLS.md was verified with)
#   SKIP_NPM=1       skip the npm part;  SKIP_YSWEET=1  skip the cargo part
#   FORCE=1          reinstall node_modules even if they look up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

Y_SWEET_VERSION="${Y_SWEET_VERSION:-0.9.1}"
ysweet_root="$here/.cargo"
ysweet_bin="$ysweet_root/bin/y-sweet"

log() { printf '[peers/install] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- npm
if [[ "${SKIP_NPM:-0}" != 1 ]]; then
  command -v node >/dev/null || { log "node not found (need Node >= 20)"; exit 1; }
  command -v npm >/dev/null || { log "npm not found"; exit 1; }
  node_major="$(node -p 'process.versions.node.split(".")[0]')"
  if (( node_major < 20 )); then
    log "Node $(node --version) is too old (need >= 20; @hocuspocus/server 4 declares >= 22 but runs on 20)"
    exit 1
  fi
  if [[ -f package-lock.json ]]; then
    # npm ci writes node_modules/.package-lock.json; if it is newer than the
    # lockfile, the tree was installed from this lockfile already.
    if [[ "${FORCE:-0}" != 1 && -f node_modules/.package-lock.json && node_modules/.package-lock.json -nt package-lock.json ]]; then
      log "node_modules up to date (FORCE=1 to reinstall)"
    else
      log "npm ci"
      # --ignore-scripts: the only install script in the tree is leveldown's
      # (optional dep of @y/websocket-server, used only with YPERSISTENCE,
      # which we never set).
      npm ci --no-audit --no-fund --ignore-scripts
    fi
  else
    log "no package-lock.json: npm install"
    npm install --no-audit --no-fund --ignore-scripts
  fi
fi

# ---------------------------------------------------------------- y-sweet
if [[ "${SKIP_YSWEET:-0}" != 1 ]]; then
  have=""
  if [[ -x "$ysweet_bin" ]]; then
    have="$("$ysweet_bin" version 2>/dev/null || true)"
  fi
  if [[ "$have" == "$Y_SWEET_VERSION" ]]; then
    log "y-sweet $have already at $ysweet_bin"
  else
    command -v cargo >/dev/null || { log "cargo not found"; exit 1; }
    [[ -n "$have" ]] && log "replacing y-sweet $have with $Y_SWEET_VERSION"
    log "cargo install y-sweet $Y_SWEET_VERSION -> $ysweet_root (takes several minutes)"
    if ! cargo install y-sweet --version "$Y_SWEET_VERSION" --locked --root "$ysweet_root"; then
      log "--locked install failed; retrying without --locked"
      cargo install y-sweet --version "$Y_SWEET_VERSION" --root "$ysweet_root"
    fi
  fi
fi

log "done"
