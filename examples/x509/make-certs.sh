#!/usr/bin/env bash
# Create a demo X.509 hierarchy for the x509-devices enrollment group with the openssl CLI:
#   root CA -> intermediate CA -> device certificates (CN = registration ID)
# and write the enrollment group with the intermediate CA filled in.
#
# Usage: examples/x509/make-certs.sh [--out DIR] [REGISTRATION_ID...]
#   --out DIR          output directory (default: examples/x509/out, git-ignored)
#   REGISTRATION_ID    device registration IDs (default: x509-device-01 x509-device-02)
#
# Output (private keys are created with mode 0600 and stay in DIR):
#   root.cert.pem, root.key.pem                      demo root CA
#   intermediate.cert.pem, intermediate.key.pem      demo intermediate CA (enrolled)
#   <id>.cert.pem, <id>.key.pem, <id>.chain.pem      device certificate, key, leaf+intermediate
#   enrollment-group.yaml                            the EnrollmentGroup to apply
#
# Needs: bash, openssl (apt-get install -y openssl).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
ids=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) ids+=("$1"); shift ;;
  esac
done
[[ ${#ids[@]} -gt 0 ]] || ids=(x509-device-01 x509-device-02)

for id in "${ids[@]}"; do
  if ! [[ "$id" =~ ^[A-Za-z0-9._:-]*[A-Za-z0-9-]$ && ${#id} -le 64 ]]; then
    echo "invalid registration ID for an X.509 device: $id (letters, digits, - . _ :, at most 64)" >&2
    exit 2
  fi
done

command -v openssl >/dev/null || { echo "openssl not found (apt-get install -y openssl)" >&2; exit 1; }

umask 077
mkdir -p "$out"
cd "$out"

# Run a command, showing its stderr only when it fails (openssl x509 -req is chatty).
quiet() {
  local log rc=0
  log="$(mktemp)"
  "$@" 2>"$log" || rc=$?
  [[ $rc -eq 0 ]] || cat "$log" >&2
  rm -f "$log"
  return "$rc"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# Root CA (self-signed, 10 years).
newkey root.key.pem
openssl req -x509 -new -key root.key.pem -out root.cert.pem -days 3650 -sha256 \
  -set_serial "$(serial)" -subj "/CN=kdps demo root CA" \
  -addext "basicConstraints=critical,CA:true" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash"

# Intermediate CA (5 years), may sign end-entity certificates only.
newkey intermediate.key.pem
openssl req -new -key intermediate.key.pem -out intermediate.csr -subj "/CN=kdps demo intermediate CA"
quiet openssl x509 -req -in intermediate.csr -CA root.cert.pem -CAkey root.key.pem \
  -set_serial "$(serial)" -days 1825 -sha256 -out intermediate.cert.pem \
  -extfile <(printf '%s\n' \
    "basicConstraints=critical,CA:true,pathlen:0" \
    "keyUsage=critical,keyCertSign,cRLSign" \
    "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid,issuer")
rm -f intermediate.csr

# Device certificates (1 year): CN = registration ID, TLS client authentication.
for id in "${ids[@]}"; do
  newkey "$id.key.pem"
  openssl req -new -key "$id.key.pem" -out "$id.csr" -subj "/CN=$id"
  quiet openssl x509 -req -in "$id.csr" -CA intermediate.cert.pem -CAkey intermediate.key.pem \
    -set_serial "$(serial)" -days 365 -sha256 -out "$id.cert.pem" \
    -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:false" \
      "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=clientAuth" \
      "subjectKeyIdentifier=hash" \
      "authorityKeyIdentifier=keyid,issuer")
  rm -f "$id.csr"
  cat "$id.cert.pem" intermediate.cert.pem > "$id.chain.pem"
  openssl verify -CAfile root.cert.pem -untrusted intermediate.cert.pem "$id.cert.pem" >/dev/null
done
chmod 644 ./*.cert.pem ./*.chain.pem

# The enrollment group with the intermediate CA in place of the placeholder line, and without
# the placeholder annotation.
awk -v pemfile="intermediate.cert.pem" '
  /kdps.io\/example-placeholder:/ { next }
  /^  annotations:$/ { held = $0; next }
  held != "" { if ($0 ~ /^    /) { print held }; held = "" }
  /PLACEHOLDER: replaced by make-certs.sh/ {
    match($0, /^ */); indent = substr($0, 1, RLENGTH)
    while ((getline line < pemfile) > 0) print indent line
    close(pemfile); next
  }
  { print }
' "$here/enrollment-group.yaml" > enrollment-group.yaml
chmod 644 enrollment-group.yaml

cat <<MSG
Created in $out:
  enrollment-group.yaml   apply it:  kubectl apply -f $out/enrollment-group.yaml
  root.cert.pem, intermediate.cert.pem, and per device <id>.cert.pem / <id>.key.pem / <id>.chain.pem
Register a device, e.g.:
  kdps-device register --endpoint https://dps.iot.svc:8443 --id-scope <idScope> \\
    --registration-id ${ids[0]} --cert $out/${ids[0]}.chain.pem --key $out/${ids[0]}.key.pem --ca-cert <service CA>
MSG
