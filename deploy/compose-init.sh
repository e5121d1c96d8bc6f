#!/bin/sh
# Creates the three-member federation of compose.yaml (GE, AZ, AM), once, with the commands
# scripts/demo.py runs, each inside a one-off container of the node's image
# (`docker compose run`), so every key is made where it is used:
#
#   1. passphrases: deploy/secrets/<service>.passphrase (random; Compose secrets)
#   2. the secretariat: two root keys, federation document version 1 (threshold 2)
#   3. each member: `counterpart-node init` (signing key, TLS key and certificate in its volume);
#      its public key and certificate travel to the secretariat, which admits the member
#      with its endpoints (<service>:7700, peer <service>:7701)
#   4. both root keys sign; the document is verified and installed on every node
#   5. with --sample-data: each member publishes its records from sample_data/<CODE>
#
# Then: `docker compose up -d`. Run from anywhere; Docker Compose v2 (`docker compose`).
# To start again from nothing: `docker compose down --volumes` and remove deploy/secrets/.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
FEDERATION_ID=${FEDERATION_ID:-casc-compose}
MEMBERS="GE:Georgia AZ:Azerbaijan AM:Armenia"
DATA=/var/lib/counterpart
SECRET=/run/secrets/passphrase
SAMPLE_DATA=no

for arg in "$@"; do
    case $arg in
        --sample-data) SAMPLE_DATA=yes ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) echo "usage: $0 [--sample-data]" >&2; exit 2 ;;
    esac
done

compose() {
    docker compose -f "$HERE/compose.yaml" "$@"
}

# counterpart-node SERVICE ARGS...: the node's program in a one-off container of SERVICE,
# with the service's volume and passphrase secret mounted (ports are not published).
node() {
    service=$1
    shift
    printf '\n$ [%s] counterpart-node %s\n' "$service" "$*" >&2
    compose run --rm --no-deps -T "$service" "$@"
}

# copy FROM_SERVICE FROM_PATH TO_SERVICE TO_PATH: a public file from one volume to another,
# through this host (as a member sends its public key and certificate to the secretariat).
# Through a file rather than a pipe, so that a failed read stops the script (set -e).
TRANSFER=$(mktemp)
trap 'rm -f "$TRANSFER"' EXIT
copy() {
    printf '\n$ [%s] %s -> [%s] %s\n' "$1" "$2" "$3" "$4" >&2
    compose run --rm --no-deps -T --entrypoint cat "$1" "$2" >"$TRANSFER"
    compose run --rm --no-deps -T --entrypoint tee "$3" "$4" <"$TRANSFER" >/dev/null
}

lower() {
    printf '%s' "$1" | tr '[:upper:]' '[:lower:]'
}

docker compose version >/dev/null

echo "== 1. Passphrases of the keys (Compose secrets in $HERE/secrets)"
umask 077
mkdir -p "$HERE/secrets"
chmod 700 "$HERE/secrets"
for name in secretariat ge az am; do
    file="$HERE/secrets/$name.passphrase"
    if [ -s "$file" ]; then
        echo "   keeping $file"
        continue
    fi
    head -c 32 /dev/urandom | base64 | tr -d '\n/+=' >"$file"
    # The node runs as uid 10001 in its container and reads the secret as a bind-mounted file.
    if [ "$(id -u)" = 0 ]; then
        chown 10001:10001 "$file"
        chmod 400 "$file"
    else
        chmod 444 "$file" # readable in the container; on this host the mode-700 directory guards it
    fi
    echo "   created $file"
done

if compose run --rm --no-deps -T --entrypoint test secretariat -e "$DATA/root-1.pub"; then
    echo "the federation already exists (volume counterpart_secretariat-data); to start again:" >&2
    echo "  docker compose -f $HERE/compose.yaml down --volumes && rm -r $HERE/secrets" >&2
    exit 1
fi

echo
echo "== 2. The secretariat creates the trust root: 2 root keys, threshold 2"
for i in 1 2; do
    node secretariat federation keygen --out "$DATA/root-$i.key" --passphrase-file "$SECRET"
done
node secretariat federation init --id "$FEDERATION_ID" \
    --root-key "$DATA/root-1.pub" --root-key "$DATA/root-2.pub" --threshold 2 \
    --out "$DATA/federation.json"

echo
echo "== 3. Each member creates its node; the secretariat admits it"
for member in $MEMBERS; do
    code=${member%%:*}
    name=${member#*:}
    service=$(lower "$code")
    node "$service" init --member "$code" --data-dir "$DATA" \
        --listen 0.0.0.0:7700 --peer-listen 0.0.0.0:7701 --host "$service" \
        --passphrase-file "$SECRET"
    copy "$service" "$DATA/keys/node-key.pub" secretariat "$DATA/$code-node-key.pub"
    copy "$service" "$DATA/keys/tls-cert.pem" secretariat "$DATA/$code-tls-cert.pem"
    node secretariat federation add-member "$DATA/federation.json" --code "$code" \
        --display-name "$name" --key "$DATA/$code-node-key.pub" \
        --tls-cert "$DATA/$code-tls-cert.pem" \
        --endpoint "$service:7700" --peer-endpoint "$service:7701"
done

echo
echo "== 4. Both root key holders sign; every node installs the document"
for i in 1 2; do
    node secretariat federation sign "$DATA/federation.json" --key "$DATA/root-$i.key" \
        --passphrase-file "$SECRET"
done
node secretariat federation verify "$DATA/federation.json"
for member in $MEMBERS; do
    service=$(lower "${member%%:*}")
    copy secretariat "$DATA/federation.json" "$service" "$DATA/federation.json"
    node "$service" federation install "$DATA/federation.json" --data-dir "$DATA"
done

if [ "$SAMPLE_DATA" = yes ]; then
    echo
    echo "== 5. Each member publishes its own records (sample_data/<CODE>), signed"
    for member in $MEMBERS; do
        code=${member%%:*}
        service=$(lower "$code")
        printf '\n$ [%s] counterpart-node publish /records\n' "$service" >&2
        compose run --rm --no-deps -T -v "$REPO/sample_data/$code:/records:ro" "$service" \
            publish /records --data-dir "$DATA" --passphrase-file "$SECRET"
    done
fi

cat <<EOF

Done. Start the federation and watch it become healthy:
  docker compose -f $HERE/compose.yaml up -d
  docker compose -f $HERE/compose.yaml ps
Ask it from this host (public ports on loopback: GE 7700, AZ 7710, AM 7720):
  docker compose -f $HERE/compose.yaml run --rm --no-deps -T --entrypoint cat ge $DATA/federation.json >federation.json
  counterpart trust federation.json
  counterpart --server 127.0.0.1:7700 --server-member GE members
Issue an access token (GE's administrator):
  docker compose -f $HERE/compose.yaml exec -T ge counterpart-node access grant --subject prosecutor.1 --passphrase-file $SECRET >prosecutor.1.token
EOF
