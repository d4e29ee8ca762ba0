#!/usr/bin/env bash
# Re-create generation/front/static/vendor/: the dashboard's 3D splat viewer, taken from npm, served by the front
# end itself (the page loads nothing from outside).
#   scripts/vendor_viewer.sh            # the pinned versions below
#   SPARK_VERSION=2.2.0 THREE_VERSION=0.180.0 scripts/vendor_viewer.sh
# Spark declares three as a peer dependency; keep THREE_VERSION at the version Spark is built against.
set -euo pipefail
cd "$(dirname "$0")/.."

SPARK_VERSION=${SPARK_VERSION:-2.2.0}
THREE_VERSION=${THREE_VERSION:-0.180.0}
DEST=generation/front/static/vendor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(
  cd "$work"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --loglevel=error --ignore-scripts \
    "@sparkjsdev/spark@${SPARK_VERSION}" "three@${THREE_VERSION}"
)
modules="$work/node_modules"

rm -rf "$DEST"
copy() {  # copy <path under node_modules> <path under $DEST>
  mkdir -p "$(dirname "$DEST/$2")"
  cp "$modules/$1" "$DEST/$2"
}
copy @sparkjsdev/spark/dist/spark.module.min.js spark/spark.module.min.js
copy @sparkjsdev/spark/LICENSE spark/LICENSE
# Flat names: a folder called build/ is ignored by git here. three.module.min.js imports ./three.core.min.js.
copy three/build/three.module.min.js three/three.module.min.js
copy three/build/three.core.min.js three/three.core.min.js
# The page's import map sends three/addons/ to three/addons/ here, as three's own docs do to examples/jsm/.
copy three/examples/jsm/controls/OrbitControls.js three/addons/controls/OrbitControls.js
# Spark imports three/addons/postprocessing/Pass.js.
copy three/examples/jsm/postprocessing/Pass.js three/addons/postprocessing/Pass.js
copy three/LICENSE three/LICENSE

installed_spark=$(node -p "require('$modules/@sparkjsdev/spark/package.json').version")
installed_three=$(node -p "require('$modules/three/package.json').version")
{
  echo "# Vendored by scripts/vendor_viewer.sh; do not edit these files by hand."
  echo "@sparkjsdev/spark ${installed_spark} MIT"
  echo "three ${installed_three} MIT"
  echo "# sha256 of every file:"
  (cd "$DEST" && find . -type f ! -name VENDORED.txt | sort | sed 's|^\./||' | xargs sha256sum)
} > "$DEST/VENDORED.txt"

echo "vendored @sparkjsdev/spark ${installed_spark} and three ${installed_three} into $DEST:"
du -sh "$DEST"
