#!/usr/bin/env bash
# Builds the web client into web-client/dist when it is missing or older than its sources:
# `npm ci` when the lockfile changed, then `tsc --noEmit` (strict) and `vite build`.
# The `tandem` binary embeds web-client/dist in release builds and reads it from disk in debug
# builds, so this runs before cargo in scripts/run.sh and scripts/test.sh.
#   --force  build even when dist/ is up to date
#   --lint   also run eslint and prettier's check, whether or not dist/ is stale (.ci/run does)
set -euo pipefail
cd "$(dirname "$0")/../web-client"

force=no
lint=no
for arg in "$@"; do
  case "$arg" in
    --force) force=yes ;;
    --lint) lint=yes ;;
    *) echo "build-web: unknown argument $arg (expected --force or --lint)" >&2; exit 2 ;;
  esac
done

if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-web: installing nodejs and npm" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "build-web: node and npm are needed to build the web client (apt-get install -y nodejs npm)" >&2
    exit 1
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

stale=yes
if [ -f dist/index.html ]; then
  newer=$(find src public index.html package.json package-lock.json tsconfig.json vite.config.ts -newer dist/index.html -print -quit)
  [ -z "$newer" ] && stale=no
fi
if [ "$stale" = yes ] || [ "$force" = yes ]; then
  npm run --silent build
else
  echo "build-web: web-client/dist is up to date"
fi

if [ "$lint" = yes ]; then
  npm run --silent lint
  npm run --silent format:check
fi
