#!/usr/bin/env bash
# Extract the vendored Conduit and ruma side by side into DIR, apply the mxpolicy patch series
# to it, and point Conduit's dependency on mxpolicy-host at this checkout's host crate.
#
#   integrations/conduit/apply.sh DIR
#
# Then: cd DIR/conduit && cargo build --no-default-features --features conduit_bin,backend_sqlite
#
# Environment:
#   MXPOLICY_VENDOR  the directory holding the vendored archives (default: ../shared/vendor
#                    next to this checkout)
#   MXPOLICY_HOST    the mxpolicy-host crate (default: host/ of this checkout)
#
# DIR becomes a git repository: one commit "upstream" (the archives as they are), one commit
# per patch (git am), and the host path written into conduit/Cargo.toml as an uncommitted
# change (the patches carry the placeholder @MXPOLICY_HOST@, never a machine's path).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# The vendored archives: $MXPOLICY_VENDOR, else ../shared/vendor beside this checkout, else
# /work/shared/vendor (where this workplace keeps them for a checkout cloned elsewhere).
vendor="${MXPOLICY_VENDOR:-}"
if [[ -z "$vendor" ]]; then
    for candidate in "$root/../shared/vendor" /work/shared/vendor; do
        if [[ -f "$candidate/conduit-d058dab.tar.gz" ]]; then
            vendor="$candidate"
            break
        fi
    done
    vendor="${vendor:-$root/../shared/vendor}"
fi
host="${MXPOLICY_HOST:-$root/host}"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir="$1"

conduit_tar="$vendor/conduit-d058dab.tar.gz"
ruma_tar="$vendor/ruma-d879f7df.tar.gz"
for f in "$conduit_tar" "$ruma_tar"; do
    [[ -f "$f" ]] || { echo "missing $f (set MXPOLICY_VENDOR)" >&2; exit 1; }
done
[[ -f "$host/Cargo.toml" ]] || { echo "no crate at $host (set MXPOLICY_HOST)" >&2; exit 1; }
host="$(cd "$host" && pwd)"
case "$host" in
    *'|'* | *'&'* | *'\'*) echo "the host path must not contain | & or \\: $host" >&2; exit 1 ;;
esac
if [[ -e "$dir/conduit" || -e "$dir/ruma" ]]; then
    echo "$dir already holds conduit/ or ruma/; choose an empty directory" >&2
    exit 1
fi

mkdir -p "$dir"
tar -xzf "$conduit_tar" -C "$dir"
tar -xzf "$ruma_tar" -C "$dir"

git_() { git -C "$dir" -c user.name=mxpolicy -c user.email=mxpolicy@localhost -c commit.gpgsign=false "$@"; }
git_ init -q
git_ add -A
git_ commit -q -m upstream
shopt -s nullglob
patches=("$here"/[0-9][0-9][0-9][0-9]-*.patch)
[[ ${#patches[@]} -gt 0 ]] || { echo "no patches in $here" >&2; exit 1; }
git_ am -q --committer-date-is-author-date "${patches[@]}"

sed -i "s|@MXPOLICY_HOST@|$host|" "$dir/conduit/Cargo.toml"
grep -q "mxpolicy-host = { path = \"$host\" }" "$dir/conduit/Cargo.toml" || {
    echo "could not write the host path into $dir/conduit/Cargo.toml" >&2
    exit 1
}

echo "applied ${#patches[@]} patches in $dir (mxpolicy-host: $host)"
echo "build: cd $dir/conduit && cargo build --no-default-features --features conduit_bin,backend_sqlite"
