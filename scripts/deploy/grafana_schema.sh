#!/usr/bin/env bash
# Checks deploy/grafana/dashboards/*.json against Grafana's own dashboard schema: the TypeScript
# types of @grafana/schema (npm) with `satisfies Dashboard` under `tsc --strict`, so an unknown
# field or a wrong type anywhere in the dashboard (panels, targets, variables, gridPos) is an
# error. Packages go to target/deploy-cache/grafana-schema (git-ignored). Exit 0 = every
# dashboard type-checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=target/deploy-cache/grafana-schema
mkdir -p "$work"
if [ ! -x "$work/node_modules/.bin/tsc" ] || [ ! -d "$work/node_modules/@grafana/schema" ]; then
  echo '{"name":"grafana-schema-check","private":true}' > "$work/package.json"
  (cd "$work" && npm install --silent --no-audit --no-fund @grafana/schema@13.2.3 typescript@5.9.3)
fi
status=0
for dash in deploy/grafana/dashboards/*.json; do
  name=$(basename "$dash" .json)
  {
    echo "import type { Dashboard } from '@grafana/schema';"
    printf 'export const dashboard = ('
    python3 -c "import sys; sys.stdout.write(open(sys.argv[1]).read().rstrip())" "$dash"
    echo ') satisfies Dashboard;'
  } > "$work/$name.ts"
  printf '{"compilerOptions":{"strict":true,"noEmit":true,"module":"nodenext","moduleResolution":"nodenext","target":"es2022","skipLibCheck":true},"files":["%s.ts"]}\n' "$name" > "$work/tsconfig.json"
  if (cd "$work" && node_modules/.bin/tsc -p tsconfig.json); then
    echo "PASS  $dash satisfies @grafana/schema 13.2.3's Dashboard type"
  else
    echo "FAIL  $dash does not match Grafana's dashboard schema (errors above; line numbers are in $work/$name.ts)"
    status=1
  fi
done
exit $status
