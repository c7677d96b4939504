#!/usr/bin/env bash
# Installs the system packages kdps's tests need (Debian/Ubuntu, apt-get). Idempotent: installs
# only what is missing and runs `apt-get update` only when something is. CI (fresh machine, root)
# runs this before building. Other test dependencies: append to PACKAGES and CHECKS below.
#
#   swtpm swtpm-tools   software TPM for the TPM attestation tests (device + service)
#   tpm2-tools          tpm2_createek / tpm2_readpublic, the reference the EK export is compared with
#   libtss2-dev         TSS headers and libraries for tss-esapi (kdps-device feature "tpm")
#   pkg-config          lets tss-esapi-sys find libtss2 at build time
#   openssl             independent judge in the KDFa / X.509 tests
#   python3 nodejs      independent SAS-token / group-key implementations in the SAS known-answer tests
set -euo pipefail

PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config openssl python3 nodejs)

# Commands (or pkg-config modules) that must work afterwards: "description|shell test".
CHECKS=(
  "swtpm|command -v swtpm"
  "swtpm_setup|command -v swtpm_setup"
  "tpm2_createek|command -v tpm2_createek"
  "tpm2_readpublic|command -v tpm2_readpublic"
  "pkg-config tss2-esys|pkg-config --exists tss2-esys"
  "openssl|command -v openssl"
  "python3|command -v python3"
  "node|command -v node"
)

log() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  die "apt-get/dpkg not found: install these packages with your system's package manager: ${PACKAGES[*]}"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if is_installed "$pkg"; then
    log "$pkg: already installed"
  else
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  log "missing: ${missing[*]}"
  log "running: apt-get update"
  "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
  log "running: apt-get install -y --no-install-recommends ${missing[*]}"
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
fi

failed=()
for check in "${CHECKS[@]}"; do
  name=${check%%|*}
  if bash -c "${check#*|}" >/dev/null 2>&1; then
    log "ok: $name"
  else
    failed+=("$name")
  fi
done
((${#failed[@]} == 0)) || die "still unavailable after installing: ${failed[*]}"
log "all test dependencies present"

# ---------------------------------------------------------------------------------------------
# Azure IoT SDK for Node (tests/tests/azure_sdk_node.rs): the unmodified npm packages pinned in
# tests/azure-sdk/package-lock.json, installed into tests/azure-sdk/node_modules (gitignored).
# Runs `npm ci` only when node_modules is missing or the lockfile changed since the last install.
# Install scripts are skipped: the packages are plain JavaScript (tss.js's optional ffi/ref
# native modules are only loaded on Windows and ship prebuilt binaries anyway).
# ---------------------------------------------------------------------------------------------
AZURE_SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/azure-sdk"
if ! command -v npm >/dev/null 2>&1; then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install npm"
    SUDO=(sudo)
  fi
  log "npm missing; running: apt-get install -y npm"
  "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends npm \
    || die "apt-get install npm failed"
fi
lock_hash="$(sha256sum "$AZURE_SDK_DIR/package-lock.json" | cut -d' ' -f1)"
stamp="$AZURE_SDK_DIR/node_modules/.kdps-lock-sha256"
if [[ -d "$AZURE_SDK_DIR/node_modules" && -f "$stamp" && "$(cat "$stamp")" == "$lock_hash" ]]; then
  log "azure-sdk npm packages: up to date"
else
  log "running: npm ci --prefix tests/azure-sdk"
  npm ci --prefix "$AZURE_SDK_DIR" --ignore-scripts --no-audit --no-fund \
    || die "npm ci failed in $AZURE_SDK_DIR"
  printf '%s\n' "$lock_hash" >"$stamp"
fi
log "azure-sdk npm packages present"
