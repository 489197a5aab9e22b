#!/usr/bin/env bash
# vmsnap demo: a fresh deployment in a temporary folder, its network, two VMs, the ledger.
set -euo pipefail

dir=$(mktemp -d -t vmsnap-demo.XXXXXX)
trap 'vmsnap --config "$dir" down >/dev/null 2>&1 || true' EXIT
export VMSNAP_CONFIG="$dir/vmsnap.toml"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step vmsnap init --dir "$dir" --name demo
step vmsnap up
step vmsnap status
step vmsnap vm register web-01 --type kvm --ip 10.0.0.11 --disk system:root:20G --disk data:db:100G
step vmsnap vm register build-02 --type kvm --ip 10.0.0.12 --disk system:root:40G
step vmsnap vm list
step vmsnap status
url=$(vmsnap disk url web-01 root)
printf '\n\033[1m$ vmsnap disk url web-01 root\033[0m\n%s\n' "$url"
if command -v qemu-io >/dev/null 2>&1; then
    step qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'flush' -c 'read -P 0xab 0 1M' "$url"
fi
head -c 4M /dev/urandom > "$dir/image.raw"
truncate -s 16M "$dir/image.raw"
step vmsnap disk import build-02 root "$dir/image.raw"
step vmsnap disk export build-02 root "$dir/exported.raw"
step cmp -n 16777216 "$dir/image.raw" "$dir/exported.raw"
step vmsnap ledger log
step vmsnap ledger head
step vmsnap ledger verify
step vmsnap down
printf '\ndeployment kept in %s\n' "$dir"
