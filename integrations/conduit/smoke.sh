#!/usr/bin/env bash
# Run a patched Conduit on loopback with the sample policy set and check the consent gate
# through the client-server API with curl:
#
#   integrations/conduit/smoke.sh CONDUIT_BINARY [WORKDIR]
#
# 1. register @alice (m.login.dummy); 2. createRoom is refused: 403 M_CONSENT_NOT_GIVEN with a
# consent_uri on Conduit's own URL (Synapse refuses room creation without consent too);
# 3. the consent page answers at that URI; 4. alice accepts (the page's form, POSTed);
# 5. createRoom (a public room) and a message now succeed; 6. the consent policy's version is
# changed in its config file while Conduit runs: the next message is refused again (hot swap);
# 7. the GDPR erasure story: alice accepts the new version; bob registers, consents, joins; alice
# uploads an image, posts it and a message; bob can fetch the image; alice deactivates with
# erase: true (user-interactive auth with her password); bob still sees her messages whole
# (/messages); carol registers, consents and joins afterwards: /messages, /event, /context and
# /sync serve her alice's messages redacted (no body; erasure policy, on-client-serve); the image
# is refused to carol, bob and anonymous requests with Conduit's own not-found answer, byte for
# byte the answer for an mxc that does not exist (media-ownership policy, on-media-fetch);
# 8. the grace period (2 s in this set, instead of the default 30 days) ends: the timer task
# fires the erasure's and media-ownership's timers and the erasure is final; carol's view is
# unchanged.
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
# A short grace period for the erasure and media-ownership policies (default: 30 days).
sed -i -e '/^path = .*\/erasure\.wasm"$/a config = { grace_period_ms = 2000 }' \
    -e '/^path = .*\/media-ownership\.wasm"$/a config = { grace_period_ms = 2000 }' \
    "$work/set/policy-set.toml"
[[ $(grep -c '^config = { grace_period_ms = 2000 }' "$work/set/policy-set.toml") == 2 ]]
cat >"$work/conduit.toml" <<EOF
[global]
server_name = "localhost"
log = "warn,conduit::service::mxpolicy=info"
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

call POST /_matrix/client/v3/createRoom '{"name":"after consent","preset":"public_chat"}'
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


# --- GDPR erasure ---------------------------------------------------------------------------
# accept: accept the policy named by the consent_uri of the last refusal (in $body).
accept() {
    local uri query answer
    uri="$(jq -r .consent_uri <<<"$body")"
    query="${uri#*\?}"
    answer="$(curl -s -w '\n%{http_code}' -X POST --data "$query" "$base/_mxpolicy/consent/")"
    echo "> POST $base/_mxpolicy/consent/ $query"
    echo "< ${answer##*$'\n'} $(grep -o 'You ([^<]*' <<<"$answer" | head -1)"
    [[ ${answer##*$'\n'} == 200 ]] || fail "accept $uri"
}
# consenting METHOD PATH [JSON]: the call; if refused for want of consent, accept and call again.
consenting() {
    call "$@"
    if [[ $status == 403 && "$(jq -r .errcode <<<"$body")" == M_CONSENT_NOT_GIVEN ]]; then
        accept
        call "$@"
    fi
}
register() {
    token=
    call POST /_matrix/client/v3/register \
        "{\"username\":\"$1\",\"password\":\"$1 password\",\"auth\":{\"type\":\"m.login.dummy\"}}"
    [[ $status == 200 ]] || fail "register $1"
    token="$(jq -r .access_token <<<"$body")"
}
# media TOKEN PATH: GET a media path as that user ("" = anonymous); sets $status and $body.
media() {
    local out
    out="$(curl -s -w '\n%{http_code}' ${1:+-H "Authorization: Bearer $1"} "$base$2" | tr -d '\0')"
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
    echo "> GET $2${1:+ (as ${3:-user})}"
    if [[ $status == 200 ]]; then echo "< $status (${#body} bytes)"; else echo "< $status $body"; fi
}
# alice_events: alice's m.room.message events of a /messages or /context answer in $body.
alice_events() {
    jq -c '[(.chunk // [], .events_before // [], .events_after // [], [.event // empty])[]
            | select(.sender == "@alice:localhost" and .type == "m.room.message")]' <<<"$body"
}

alice_token="$token"
consenting PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/t3" '{"msgtype":"m.text","body":"hello under 2.0"}'
[[ $status == 200 ]] || fail "send after accepting 2.0"

register bob
bob_token="$token"
consenting POST "/_matrix/client/v3/join/$room" '{}'
[[ $status == 200 ]] || fail "bob joins"

token="$alice_token"
png="$work/pixel.png"
printf '\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\1\0\0\0\1\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\xff\xff?\0\x05\xfe\x02\xfe\xa75\x81\x84\0\0\0\0IEND\xaeB`\x82' >"$png"
out="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $token" -H 'Content-Type: image/png' \
    --data-binary "@$png" "$base/_matrix/media/v3/upload?filename=pixel.png")"
status="${out##*$'\n'}"; body="${out%$'\n'*}"
echo "> POST /_matrix/media/v3/upload?filename=pixel.png ($(wc -c <"$png") bytes of image/png)"
echo "< $status $body"
[[ $status == 200 ]] || fail "upload"
mxc="$(jq -r .content_uri <<<"$body")"
media_path="${mxc#mxc://}"
call PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/img" \
    "{\"msgtype\":\"m.image\",\"body\":\"pixel.png\",\"url\":\"$mxc\",\"info\":{\"mimetype\":\"image/png\"}}"
[[ $status == 200 ]] || fail "send image"
call PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/secret" '{"msgtype":"m.text","body":"my secret, before erasure"}'
[[ $status == 200 ]] || fail "send message"
secret_id="$(jq -r .event_id <<<"$body")"

media "$bob_token" "/_matrix/client/v1/media/download/$media_path" bob
[[ $status == 200 ]] || fail "bob fetches the image before the erasure"

# Deactivation with erasure: user-interactive auth, first without auth (a session), then the password.
call POST /_matrix/client/v3/account/deactivate '{"erase":true}'
[[ $status == 401 ]] || fail "deactivate should ask for auth"
session="$(jq -r .session <<<"$body")"
call POST /_matrix/client/v3/account/deactivate \
    "{\"erase\":true,\"auth\":{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"alice\"},\"password\":\"correct horse\",\"session\":\"$session\"}}"
[[ $status == 200 ]] || fail "deactivate with erase"

token="$bob_token"
call GET "/_matrix/client/v3/rooms/$room/messages?dir=b&limit=50"
[[ $status == 200 ]] || fail "bob /messages"
echo "  bob sees alice's messages: $(alice_events | jq -c '[.[].content.body]')"
[[ "$(alice_events | jq '[.[] | select(.content.body == "my secret, before erasure")] | length')" == 1 ]] \
    || fail "bob should see alice's message whole"

register carol
carol_token="$token"
consenting POST "/_matrix/client/v3/join/$room" '{}'
[[ $status == 200 ]] || fail "carol joins"
check_carol() {
    token="$carol_token"
    call GET "/_matrix/client/v3/rooms/$room/messages?dir=b&limit=50" >/dev/null
    [[ $status == 200 ]] || fail "carol /messages"
    echo "> GET /_matrix/client/v3/rooms/$room/messages?dir=b&limit=50 (as carol)"
    echo "< $status alice's messages: $(alice_events | jq -c '[.[] | {event_id, content}]')"
    [[ "$(alice_events | jq 'length')" -ge 3 ]] || fail "carol should get alice's messages (redacted)"
    [[ "$(alice_events | jq '[.[] | select(.content | has("body"))] | length')" == 0 ]] \
        || fail "carol should see alice's messages redacted"
    call GET "/_matrix/client/v3/rooms/$room/event/$secret_id"
    [[ $status == 200 && "$(jq '.content | has("body")' <<<"$body")" == false ]] || fail "carol /event should be redacted"
    call GET "/_matrix/client/v3/rooms/$room/context/$secret_id?limit=10" >/dev/null
    echo "> GET /_matrix/client/v3/rooms/$room/context/$secret_id?limit=10 (as carol)"
    echo "< $status alice's messages: $(alice_events | jq -c '[.[] | {event_id, content}]')"
    [[ $status == 200 && "$(alice_events | jq '[.[] | select(.content | has("body"))] | length')" == 0 ]] \
        || fail "carol /context should be redacted"
    call GET "/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A50%7D%7D%7D" >/dev/null
    body="$(jq -c --arg r "$room" '{chunk: (.rooms.join[$r].timeline.events // [])}' <<<"$body")"
    echo "> GET /_matrix/client/v3/sync (as carol, timeline limit 50)"
    echo "< $status alice's messages in the timeline: $(alice_events | jq -c '[.[] | {event_id, content}]')"
    [[ "$(alice_events | jq 'length')" -ge 1 && "$(alice_events | jq '[.[] | select(.content | has("body"))] | length')" == 0 ]] \
        || fail "carol /sync should be redacted"
}
check_carol

# The image: refused to everyone, exactly as an mxc that does not exist.
media "$carol_token" "/_matrix/client/v1/media/download/localhost/doesnotexist" carol
missing="$status $body"
for who in carol bob; do
    t="${who}_token"
    media "${!t}" "/_matrix/client/v1/media/download/$media_path" "$who"
    [[ "$status $body" == "$missing" ]] || fail "$who should get the not-found answer for alice's image"
    media "${!t}" "/_matrix/client/v1/media/thumbnail/$media_path?width=32&height=32" "$who"
    [[ "$status $body" == "$missing" ]] || fail "$who should get the not-found answer for the thumbnail"
done
media "" "/_matrix/media/v3/download/$media_path"
[[ $status == 404 && "$(jq -r .errcode <<<"$body")" == M_NOT_FOUND ]] || fail "anonymous download should be refused"

# The grace period (2 s) ends: the timer task makes the erasure final.
for _ in $(seq 1 20); do
    sleep 0.5
    [[ $(grep -c 'mxpolicy: timer .* of erasure fired' "$work/conduit.log" || true) -ge 1 ]] && break
done
grep -E 'mxpolicy: timer .* fired|mxpolicy: action pending' "$work/conduit.log" | sed 's/^.*mxpolicy: /  log: /' | tail -8
grep -q 'mxpolicy: timer .* of erasure fired' "$work/conduit.log" || fail "the erasure's grace-period timer did not fire"
check_carol >/dev/null
echo "  after the grace period: carol's view is unchanged (redacted)"
media "$bob_token" "/_matrix/client/v1/media/download/$media_path" bob
[[ "$status $body" == "$missing" ]] || fail "bob should get the not-found answer after the grace period"

echo "OK (work dir $work)"
