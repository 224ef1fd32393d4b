#!/usr/bin/env bash
# Run a patched Conduit on loopback with the sample policy set and check the consent gate
# through the client-server API with curl:
#
#   integrations/conduit/smoke.sh CONDUIT_BINARY [WORKDIR]
#
# 1. register @alice (m.login.dummy); 2. createRoom is refused: 403 M_CONSENT_NOT_GIVEN with a
# consent_uri on Conduit's own URL (Synapse refuses room creation without consent too);
# 3. the consent page answers at that URI; 4. alice accepts (the page's form, POSTed);
# 5. createRoom and a message now succeed; 6. the consent policy's version is changed in its
# config file while Conduit runs: the next message is refused again (hot swap).
#
# Environment: PORT (6167), MXPOLICY_BIN (target/debug/mxpolicy), MXPOLICY_PLUGINS
# (target/plugins); both built by ./scripts/serve.sh or ./scripts/test.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 CONDUIT_BINARY [WORKDIR]" >&2; exit 2; }
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
work="${2:-$(mktemp -d /tmp/conduit-smoke.XXXXXX)}"
port="${PORT:-6167}"
mx="${MXPOLICY_BIN:-$root/target/debug/mxpolicy}"
plugins="${MXPOLICY_PLUGINS:-$root/target/plugins}"
base="http://127.0.0.1:$port"

mkdir -p "$work"
"$mx" init "$work/set" --port "$port" --plugins "$plugins" >/dev/null 2>&1
grep -q "public_baseurl = \"$base/\"" "$work/set/consent.toml"
cat >"$work/conduit.toml" <<EOF
[global]
server_name = "localhost"
database_backend = "sqlite"
database_path = "$work/db"
address = "127.0.0.1"
port = $port
allow_registration = true
allow_federation = false
allow_check_for_updates = false
trusted_servers = []
mxpolicy_policy_set = "$work/set/policy-set.toml"
EOF
mkdir -p "$work/db"

CONDUIT_CONFIG="$work/conduit.toml" "$bin" >"$work/conduit.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "$base/_matrix/client/versions" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "Conduit exited; see $work/conduit.log" >&2; tail -20 "$work/conduit.log" >&2; exit 1; }
    sleep 0.5
done

fail() { echo "FAIL: $*" >&2; echo "log: $work/conduit.log" >&2; exit 1; }
# call METHOD PATH [JSON]: sets $status and $body, and prints the exchange.
call() {
    local out
    out="$(curl -s -w '\n%{http_code}' -X "$1" ${token:+-H "Authorization: Bearer $token"} \
        -H 'Content-Type: application/json' ${3:+--data "$3"} "$base$2")"
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
    echo "> $1 $2${3:+ $3}"
    echo "< $status $body"
}

call POST /_matrix/client/v3/register \
    '{"username":"alice","password":"correct horse","auth":{"type":"m.login.dummy"}}'
[[ $status == 200 ]] || fail "register"
token="$(jq -r .access_token <<<"$body")"

call POST /_matrix/client/v3/createRoom '{"name":"before consent"}'
[[ $status == 403 && "$(jq -r .errcode <<<"$body")" == M_CONSENT_NOT_GIVEN ]] || fail "createRoom should be refused"
uri="$(jq -r .consent_uri <<<"$body")"
[[ $uri == "$base/_mxpolicy/consent/?"* ]] || fail "consent_uri $uri is not on Conduit"

page="$(curl -s -w '\n%{http_code}' -D "$work/page.headers" "$uri")"
echo "> GET $uri"
echo "< ${page##*$'\n'} ($(wc -c <<<"$page") bytes of HTML; $(grep -i '^content-security-policy' "$work/page.headers" | tr -d '\r'))"
[[ ${page##*$'\n'} == 200 ]] || fail "consent page"

query="${uri#*\?}"
accepted="$(curl -s -w '\n%{http_code}' -X POST --data "$query" "$base/_mxpolicy/consent/")"
echo "> POST $base/_mxpolicy/consent/ $query"
echo "< ${accepted##*$'\n'} $(grep -o 'You ([^<]*' <<<"$accepted" | head -1)"
[[ ${accepted##*$'\n'} == 200 ]] || fail "accept"

call POST /_matrix/client/v3/createRoom '{"name":"after consent"}'
[[ $status == 200 ]] || fail "createRoom after consent"
room="$(jq -r .room_id <<<"$body")"
call PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/t1" '{"msgtype":"m.text","body":"hello"}'
[[ $status == 200 ]] || fail "send after consent"

# Hot swap: a new policy version, written while Conduit runs (rename into place).
sed 's/^version = "1.0"/version = "2.0"/' "$work/set/consent.toml" >"$work/set/consent.toml.new"
mv "$work/set/consent.toml.new" "$work/set/consent.toml"
for i in $(seq 1 40); do
    sleep 0.25
    call PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/t2-$i" '{"msgtype":"m.text","body":"hello again"}' >/dev/null
    [[ $status == 200 ]] || break
done
echo "> PUT /_matrix/client/v3/rooms/$room/send/m.room.message/t2-$i (after the version change)"
echo "< $status $body"
[[ $status == 403 && "$(jq -r .consent_uri <<<"$body")" == *"v=2.0"* ]] || fail "send after the version change should be refused"

echo "OK (work dir $work)"
