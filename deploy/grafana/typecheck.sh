#!/usr/bin/env bash
# Type-check the dashboard against Grafana's published schema (@grafana/schema) with tsc:
# the JSON becomes an object literal typed `Dashboard`, so unknown or mistyped fields fail.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --silent --no-audit --no-fund
mkdir -p build
{
  echo "import type { Dashboard } from '@grafana/schema';"
  echo
  printf 'const dashboard: Dashboard = '
  cat slmserve-dashboard.json
  echo ';'
  echo
  echo 'export default dashboard;'
} > build/dashboard.check.ts
npx --no-install tsc -p tsconfig.json
echo "slmserve-dashboard.json matches @grafana/schema's Dashboard type"
