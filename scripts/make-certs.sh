#!/usr/bin/env bash
# Makes the certificates for Zenoh mutual TLS (README, "Security"): a CA, then one key and
# certificate per party, named by its common name (the subject the access-control policy
# knows). The same openssl commands as the README's steps.
#
#   scripts/make-certs.sh DIR NAME[=SUBJECT_ALT_NAMES]...
#   scripts/make-certs.sh tls vla-robot-arm0=DNS:robot-arm0.local,IP:192.168.10.5 \
#       vla-operator vla-driver-arm0
#
# DIR/ca.pem and DIR/ca.key are made on the first run and reused after (keep ca.key off the
# robot). Each NAME gets DIR/NAME.key and DIR/NAME.pem. The robot's certificate needs the
# names and addresses peers connect to as subject alternative names (they are checked); the
# others default to DNS:NAME.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 DIR NAME[=SUBJECT_ALT_NAMES]..." >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "$0: openssl not found" >&2; exit 2; }
dir=$1
shift
mkdir -p "$dir"
days_ca=${CA_DAYS:-3650}
days=${CERT_DAYS:-825}

# Step 1: the CA, a self-signed P-256 key and certificate.
if [ ! -e "$dir/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days "$days_ca" -subj "/CN=vla-rt CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    chmod 600 "$dir/ca.key"
fi

# Step 2: per party, a key and a signing request, then the CA signs it for TLS servers and
# clients alike (a Zenoh peer both accepts and opens links).
for spec in "$@"; do
    name=${spec%%=*}
    san=DNS:$name
    [ "$spec" != "$name" ] && san=${spec#*=}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$name" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    chmod 600 "$dir/$name.key"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=$san" >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days "$days" -extfile "$dir/$name.ext" \
        -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    echo "$dir/$name.pem ($san)"
done
