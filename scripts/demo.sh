#!/usr/bin/env bash
# vmsnap demo: a fresh deployment in a temporary folder, the whole story on the default network.
set -euo pipefail

dir=$(mktemp -d -t vmsnap-demo.XXXXXX)
trap 'vmsnap --config "$dir" down >/dev/null 2>&1 || true' EXIT
export VMSNAP_CONFIG="$dir/vmsnap.toml"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
say() { printf '\n\033[36m# %s\033[0m\n' "$*"; }

say "a deployment and its local network: controller, business, transfer, 3 backup nodes"
step vmsnap init --dir "$dir" --name demo
step vmsnap up
step vmsnap status

say "chunks and manifests are encrypted at rest with data.key; keep a copy, wrapped with a passphrase"
step vmsnap key show
export VMSNAP_PASSPHRASE="demo passphrase, use a long one"
step vmsnap key export "$dir/data-key.json"
unset VMSNAP_PASSPHRASE

say "two VMs; their disks become volumes on the business node, served over NBD"
step vmsnap vm register web-01 --type kvm --ip 10.0.0.11 --disk system:root:64M --disk data:db:32M
step vmsnap vm register build-02 --type kvm --ip 10.0.0.12 --disk system:root:40G
step vmsnap vm list
url=$(vmsnap disk url web-01 root)
printf '\n\033[1m$ vmsnap disk url web-01 root\033[0m\n%s\n' "$url"

say "import a small generated disk image, then the VM writes through NBD"
python3 - "$dir/image.raw" <<'PY'
import random, sys
rng = random.Random(1)
with open(sys.argv[1], "wb") as out:
    out.truncate(64 << 20)
    for offset in range(0, 40 << 20, 4 << 20):
        out.seek(offset)
        out.write(rng.randbytes(1 << 20))
PY
step vmsnap disk import web-01 root "$dir/image.raw"
if command -v qemu-io >/dev/null 2>&1; then
    step qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'flush' "$url"
fi

say "a full snapshot, more writes, an incremental snapshot"
step vmsnap snapshot create web-01
first=$(vmsnap snapshot list web-01 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
vmsnap disk export web-01 root "$dir/at-first.raw" --snapshot "$first" >/dev/null
if command -v qemu-io >/dev/null 2>&1; then
    step qemu-io -f raw -c 'write -P 0xcd 8M 256k' -c 'write -z 20M 1M' -c 'flush' "$url"
else
    head -c 262144 /dev/urandom > "$dir/patch.raw"
    step vmsnap disk import web-01 root "$dir/patch.raw"
fi
step vmsnap snapshot create web-01
step vmsnap snapshot list web-01
step vmsnap snapshot show "${first:0:12}"

say "the auditor's proof: every chunk against the root on chain"
step vmsnap snapshot verify --all

say "roll back to the first snapshot, and show the disk is back"
step vmsnap rollback start web-01 "${first:0:12}"
step vmsnap disk export web-01 root "$dir/now.raw"
step cmp "$dir/at-first.raw" "$dir/now.raw"
echo "the disk equals the first snapshot, byte for byte"

if command -v qemu-io >/dev/null 2>&1; then
    say "a fast rollback: the VM runs on a mirror at once; what it writes meanwhile is kept"
    second=$(vmsnap snapshot list web-01 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
    step vmsnap rollback start web-01 "${second:0:12}" --fast
    step qemu-io -f raw -c 'read -P 0xcd 8M 256k' -c 'write -P 0xef 30M 64k' -c 'flush' "$url"
    step vmsnap rollback status web-01
    step vmsnap rollback finish web-01
    step qemu-io -f raw -c 'read -P 0xef 30M 64k' "$url"
    step vmsnap rollback diff web-01
fi

say "delete the first snapshot from its three places, then collect garbage"
step vmsnap snapshot delete "${first:0:12}"
step vmsnap snapshot list web-01

say "a nightly schedule that keeps the newest two, run now three times"
step vmsnap schedule set web-01 "daily 03:00" --name nightly --tz Europe/Berlin --keep-last 2
step vmsnap schedule run-now web-01
step vmsnap schedule run-now web-01
step vmsnap schedule run-now web-01
step vmsnap schedule list
step vmsnap snapshot list web-01

say "the audit log on the contract, and its verified head"
step vmsnap ledger log
step vmsnap ledger verify
step vmsnap down
printf '\ndeployment kept in %s\n' "$dir"
