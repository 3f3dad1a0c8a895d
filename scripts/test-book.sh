#!/usr/bin/env bash
# The book's build and checks, as CI runs them and as a writer runs them before
# pushing. Needs only the package registries: mdBook comes from crates.io, playwright-core (a
# browser driver that downloads no browser) from the npm registry, Chromium from Debian's packages.
# Tools are cached under ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools, so a warm run
# takes seconds.
#
#   1. mdbook build (any ERROR or WARN from mdBook fails: it exits 0 on a broken include);
#   2. sources and links: every include and anchor exists, every page is in the summary, every
#      internal link and #fragment of the built site resolves (book/tests/check_links.py);
#   3. a real browser: every page loads in headless Chromium without a console error or a failed
#      request, the search UI finds "native sidecar", and a screenshot of the quick start page is
#      written to target/book-artifacts/quick-start.png (book/tests/browser-check.mjs);
#   4. the "Your own crate" page followed literally: a crate outside the workspace, made with the
#      page's commands and sources, built with warnings denied, its tests run
#      (book/tests/own-crate.sh; about 4 minutes cold on 2 cores, 1 minute warm).
#
# The book's command output and reference tables are checked against the code by
# `cargo test -p sidecar-injector --test cli_reference`, part of scripts/test-all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS

MDBOOK_VERSION=0.5.4
PLAYWRIGHT_CORE_VERSION=1.65.1

cache=${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}
tools="$cache/tools"
site="$root/target/book"
artifacts="$root/target/book-artifacts"

fail() {
  echo "book: FAILED: $*" >&2
  exit 1
}

# --- tools -----------------------------------------------------------------------------------------
# Without the default `serve`/`watch` features: the build and the search index are all CI needs.
mdbook_bin=$(bash "$root/scripts/cargo-tool.sh" mdbook "$MDBOOK_VERSION" --no-default-features --features search) ||
  fail "cargo install mdbook $MDBOOK_VERSION"
mdbook="$mdbook_bin/mdbook"

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
chromium=${CHROMIUM:-$(command -v chromium || true)}
[ -n "$chromium" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    fail "apt-get install ${missing[*]}"
  fi
  chromium=${CHROMIUM:-$(command -v chromium)}
fi

playwright_root="$tools/playwright-core-$PLAYWRIGHT_CORE_VERSION"
playwright="$playwright_root/node_modules/playwright-core"
if [ ! -f "$playwright/index.mjs" ] || ! grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$playwright/package.json"; then
  echo "== installing playwright-core $PLAYWRIGHT_CORE_VERSION from the npm registry into $playwright_root"
  mkdir -p "$playwright_root"
  # playwright-core has no dependencies and downloads no browser; Debian's Chromium is used.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$playwright_root" --no-audit --no-fund \
    --no-save --no-package-lock --loglevel=error "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null \
    || fail "npm install playwright-core@$PLAYWRIGHT_CORE_VERSION"
fi

# --- 1. build --------------------------------------------------------------------------------------
echo "== mdbook build (mdbook $MDBOOK_VERSION)"
rm -rf "$site"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$mdbook" build book --dest-dir "$site" >"$log" 2>&1; then
  cat "$log" >&2
  fail "mdbook build"
fi
if grep -E '(ERROR|WARN)' "$log" >&2; then
  fail "mdbook reported the problems above (it exits 0 on a broken include or a bad book.toml)"
fi
[ -f "$site/index.html" ] && [ -f "$site/quick-start.html" ] || fail "mdbook wrote no site to $site"

# --- 2. sources and links --------------------------------------------------------------------------
echo "== includes, anchors and internal links"
python3 book/tests/check_links.py book "$site" || fail "broken includes or links (listed above)"

# --- 3. browser ------------------------------------------------------------------------------------
echo "== headless Chromium ($("$chromium" --version 2>/dev/null | head -1))"
SITE="$site" SUMMARY="$root/book/src/SUMMARY.md" PLAYWRIGHT="$playwright" CHROMIUM="$chromium" \
  ARTIFACTS="$artifacts" timeout 300 node book/tests/browser-check.mjs \
  || fail "browser check (listed above)"
[ -s "$artifacts/quick-start.png" ] || fail "no screenshot at $artifacts/quick-start.png"

# --- 4. the "Your own crate" page, followed literally ----------------------------------------------
echo "== your own crate: the page's commands and sources, outside the workspace, warnings denied"
bash book/tests/own-crate.sh >"$log" 2>&1 || { cat "$log" >&2; fail "the own-crate page's crate (output above)"; }

pages=$(grep -cE '\]\([^)]+\.md\)' book/src/SUMMARY.md)
echo "book: all checks passed: $pages pages built, linked and loaded in Chromium, search finds \"native sidecar\", screenshot target/book-artifacts/quick-start.png ($((SECONDS - started)) s)"
