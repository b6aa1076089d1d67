#!/usr/bin/env bash
# Builds the browser client as an npm package: the wasm (profile wasm-release), wasm-bindgen's
# `--target web` glue into client-wasm/pkg/, wasm-opt (npm binaryen; Debian's is broken, DESIGN.md §6),
# a package.json with `exports`/`types`/`files`, then `npm pack`. Prints the sizes and, last,
# the tarball's path.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/worker-env.sh
source scripts/worker-env.sh || true

say() { printf '==> %s\n' "$*" >&2; }

PKG=client-wasm/pkg
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

if [ ! -x "$WASM_OPT_BIN" ]; then
  say "binaryen is missing: installing the Worker toolchain (npm ci in mediator-worker/)"
  scripts/install-worker-toolchain.sh >/dev/null
fi
if [ "$("$WASM_BINDGEN_BIN" --version 2>/dev/null || true)" != "wasm-bindgen $TANDEM_WASM_BINDGEN_VERSION" ]; then
  echo "wasm-bindgen $TANDEM_WASM_BINDGEN_VERSION is missing: run scripts/install-worker-toolchain.sh" >&2
  exit 1
fi

# The build settings live in one place, the workspace's `[profile.wasm-release]` (size by default,
# opt-level 3 for the crates a message spends its time in; docs/client.md "Size"), and the
# wasm-opt level below. client-wasm/bench/run.mjs builds through this script, so the bench measures
# exactly what ships. Knobs for the bench (not for shipping): TANDEM_CLIENT_FEATURES (extra cargo
# features, e.g. `bench`), TANDEM_CLIENT_PKG (output directory), TANDEM_CLIENT_NO_PACK=1,
# TANDEM_CLIENT_CARGO_ARGS (extra cargo arguments such as `--config ...` to try other settings)
# and TANDEM_CLIENT_WASM_OPT (the wasm-opt level and flags, e.g. `-Oz -g` to keep names).
PKG="${TANDEM_CLIENT_PKG:-$PKG}"
# `--converge` repeats -Oz's passes until the module stops shrinking: 1.6 KB gzipped less than one
# round for about 15 s more (docs/client.md "Size").
read -r -a WASM_OPT_LEVEL <<< "${TANDEM_CLIENT_WASM_OPT:--Oz --converge}"
FEATURES=()
if [ -n "${TANDEM_CLIENT_FEATURES:-}" ]; then FEATURES=(--features "$TANDEM_CLIENT_FEATURES"); fi
read -r -a EXTRA <<< "${TANDEM_CLIENT_CARGO_ARGS:-}"

# WebAssembly SIMD (128-bit): every current browser runs it (Chrome/Edge 91, Firefox 89, Safari
# 16.4); it makes the ciphers faster and the module smaller (docs/client.md "Size", BENCHMARKS.md
# "Browser device"). Only this build's target code gets it: with --target, build scripts and
# proc-macros keep the host's flags, and the Worker and the wasm tests are built without it.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:-} -C target-feature=+simd128"
# Panic messages carry source paths; the published package must not carry the builder's home
# directory or checkout path, and its size must not depend on them (docs/client.md "Size").
# Paths with spaces are left as they are (RUSTFLAGS splits on spaces).
REMAP=("$PWD/=")
for src in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do REMAP+=("$src="); done
for prefix in "${REMAP[@]}"; do
  case "$prefix" in *" "*) continue ;; esac
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS+=" --remap-path-prefix=$prefix"
done

say "cargo build -p tandem-client (wasm32, profile wasm-release, simd128) ${FEATURES[*]} ${EXTRA[*]}"
cargo build -p tandem-client --target wasm32-unknown-unknown --profile wasm-release --locked \
  "${FEATURES[@]}" "${EXTRA[@]}" >&2

# Everything below is written into a directory of this run's own, next to the package directory,
# and moved into place at the end: two builds of one checkout at once (CI jobs, a test and the
# run command) never write the same file, and a reader never sees a half-written package.
PKG="${PKG%/}"
PKG_PARENT="$(dirname "$PKG")"
mkdir -p "$PKG_PARENT"
OUT="$(mktemp -d "$PKG_PARENT/.pkg-build.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

say "wasm-bindgen --target web"
"$WASM_BINDGEN_BIN" --target web --out-dir "$OUT" --out-name tandem_client \
  "$TARGET_DIR/wasm32-unknown-unknown/wasm-release/tandem_client.wasm"

# wasm-bindgen declares `[Symbol.dispose](): void` on the client class, which compiles only with
# TypeScript's `esnext.disposable` lib: an app on `"lib": ["es2022", "dom"]` would fail on the
# package's own types. The declaration goes (the method stays in the JS, for `using`), so the
# types compile under the common `lib` settings (docs/client.md "TypeScript"; the fixture
# project checks both).
sed -i '/^ *\[Symbol\.dispose\]()/d' "$OUT/tandem_client.d.ts"
if grep -q 'Symbol\.dispose' "$OUT/tandem_client.d.ts"; then
  echo "tandem_client.d.ts still names Symbol.dispose: update the sed above" >&2
  exit 1
fi

say "wasm-opt ${WASM_OPT_LEVEL[*]}"
"$WASM_OPT_BIN" "${WASM_OPT_LEVEL[@]}" --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
  --enable-simd "$OUT/tandem_client_bg.wasm" -o "$OUT/tandem_client_bg.wasm.opt"
mv "$OUT/tandem_client_bg.wasm.opt" "$OUT/tandem_client_bg.wasm"

VERSION="$(cargo metadata --no-deps --format-version 1 --locked \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const p=JSON.parse(s).packages.find(p=>p.name==="tandem-client");process.stdout.write(p.version)})')"

say "package.json (tandem-client $VERSION)"
cat > "$OUT/package.json" <<JSON
{
  "name": "tandem-client",
  "version": "$VERSION",
  "description": "Tandem's browser device: multi-device messaging over a mediator, state in IndexedDB.",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "./tandem_client.js",
  "module": "./tandem_client.js",
  "types": "./tandem_client.d.ts",
  "exports": {
    ".": {
      "types": "./tandem_client.d.ts",
      "default": "./tandem_client.js"
    },
    "./tandem_client_bg.wasm": "./tandem_client_bg.wasm",
    "./package.json": "./package.json"
  },
  "files": [
    "tandem_client.js",
    "tandem_client.d.ts",
    "tandem_client_bg.wasm",
    "tandem_client_bg.wasm.d.ts",
    "snippets/",
    "README.md"
  ],
  "sideEffects": false
}
JSON
cp client-wasm/README.md "$OUT/README.md"
rm -f "$OUT/.gitignore"

raw_wasm=$(wc -c < "$OUT/tandem_client_bg.wasm")
raw_js=$(wc -c < "$OUT/tandem_client.js")
gz_wasm=$(gzip -9 -c "$OUT/tandem_client_bg.wasm" | wc -c)
gz_js=$(gzip -9 -c "$OUT/tandem_client.js" | wc -c)
# wasm-bindgen's `inline_js` snippets (`hasIdentity`) are JS the package ships too: counted with
# the glue, each file gzipped on its own (as a server would send it).
while IFS= read -r -d '' snippet; do
  raw_js=$((raw_js + $(wc -c < "$snippet")))
  gz_js=$((gz_js + $(gzip -9 -c "$snippet" | wc -c)))
done < <(find "$OUT/snippets" -name '*.js' -print0 2>/dev/null)
total=$((gz_wasm + gz_js))
say "sizes: wasm $raw_wasm B raw / $gz_wasm B gzip; JS glue and snippets $raw_js B raw / $gz_js B gzip; wasm + JS gzipped $total B (budget 250000, stretch 150000)"
if [ "$total" -gt 250000 ]; then
  # Reported, not fatal (docs/client.md says where the bytes go); TANDEM_CLIENT_SIZE_STRICT=1
  # makes it fail.
  echo "WARNING: wasm + JS glue is $total bytes gzipped, over the 250 KB (250 000 B) budget" >&2
  if [ "${TANDEM_CLIENT_SIZE_STRICT:-0}" = 1 ]; then exit 1; fi
fi

tarball=""
if [ "${TANDEM_CLIENT_NO_PACK:-0}" != 1 ]; then
  say "npm pack"
  tarball="$(cd "$OUT" && npm pack --silent --pack-destination . | tail -n 1)"
fi

# Into place, one build at a time (flock on a file beside the package): the old package moves
# aside, the new one takes its name, the old one goes. Builds of the same sources make the same
# files, so whichever finishes last leaves a complete package.
chmod 755 "$OUT"
exec 9> "$PKG_PARENT/.pkg-build.lock"
flock 9
OLD="$(mktemp -d "$PKG_PARENT/.pkg-build.XXXXXX")"
if [ -e "$PKG" ]; then mv "$PKG" "$OLD/pkg"; fi
mv "$OUT" "$PKG"
rm -rf "$OLD"
flock -u 9
if [ -n "$tarball" ]; then echo "$(pwd)/$PKG/$tarball"; fi
