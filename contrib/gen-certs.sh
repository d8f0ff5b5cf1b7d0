#!/usr/bin/env bash
# Make the seed's certificates in DIR (default: current folder):
#   ca.crt/ca.key          a test certificate authority
#   foobar.crt/foobar.key  a server certificate for localhost and 127.0.0.1, signed by the CA
#   client.crt/client.key  a client certificate (O=Test, CN=client), signed by the CA
#   client.p12             the same client certificate for browsers (password: "client")
set -euo pipefail
dir="${1:-.}"
mkdir -p "$dir"
cd "$dir"
days=365
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/O=Test/CN=Test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt

ec foobar.key
openssl req -new -key foobar.key -subj "/CN=localhost" -out foobar.csr
openssl x509 -req -in foobar.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
    -out foobar.crt 2>/dev/null

ec client.key
openssl req -new -key client.key -subj "/O=Test/CN=client" -out client.csr
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out client.crt 2>/dev/null
openssl pkcs12 -export -in client.crt -inkey client.key -certfile ca.crt \
    -passout pass:client -out client.p12

rm -f foobar.csr client.csr ca.srl
chmod 0644 ./*.crt
chmod 0640 ./*.key client.p12
echo "made ca.crt foobar.crt foobar.key client.crt client.key client.p12 in $(pwd)" >&2
