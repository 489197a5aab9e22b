# pragma version ~=0.4.3
# pragma evm-version cancun
"""
@title SnapshotLedger
@notice Event-sourced, hash-chained history of vmsnap operations.
@dev Every append carries an opaque canonical-CBOR payload on a stream (one per
     VM) with an expected-version check, and may record an audit fact about a
     snapshot (its Merkle root and status). The hash chain head covers every
     field of every entry, so anyone can recompute it from the events.
"""

MAX_PAYLOAD: constant(uint256) = 2048
MAX_BATCH: constant(uint256) = 32
MAX_WALK: constant(uint256) = 256

ROLE_OPERATOR: constant(uint256) = 1
ROLE_DELETER: constant(uint256) = 2
ROLE_ALL: constant(uint256) = 3

STATUS_NONE: constant(uint8) = 0
STATUS_PENDING: constant(uint8) = 1
STATUS_COMMITTED: constant(uint8) = 2
STATUS_FAILED: constant(uint8) = 3
STATUS_DELETED: constant(uint8) = 4
STATUS_RETIRED: constant(uint8) = 5


struct Entry:
    stream: bytes32
    expected_version: uint256
    subject: bytes32
    root: bytes32
    status: uint8
    payload: Bytes[MAX_PAYLOAD]


struct Snapshot:
    vm: bytes32
    root: bytes32
    status: uint8
    previous: bytes32
    seq: uint256
    updated_at: uint256
    updated_by: address


event Appended:
    seq: indexed(uint256)
    stream: indexed(bytes32)
    subject: indexed(bytes32)
    version: uint256
    root: bytes32
    status: uint8
    payload: Bytes[MAX_PAYLOAD]
    head: bytes32
    sender: address


event RolesChanged:
    account: indexed(address)
    roles: uint256
    by: address


admin: public(address)
roles: public(HashMap[address, uint256])
count: public(uint256)
head: public(bytes32)
stream_version: public(HashMap[bytes32, uint256])
live_snapshots: public(HashMap[bytes32, uint256])
latest_snapshot: public(HashMap[bytes32, bytes32])
committed_total: public(HashMap[bytes32, uint256])
retired_count: public(HashMap[bytes32, uint256])
retired: public(HashMap[bytes32, HashMap[uint256, bytes32]])
_snapshots: HashMap[bytes32, Snapshot]


@deploy
def __init__():
    self.admin = msg.sender
    self.roles[msg.sender] = ROLE_ALL
    log RolesChanged(account=msg.sender, roles=ROLE_ALL, by=msg.sender)


@external
def enrol(account: address, roles: uint256):
    """@notice Grant `roles` (a bitmask) to `account`; admin only."""
    assert msg.sender == self.admin, "only the admin may enrol"
    assert roles != 0 and roles & ~ROLE_ALL == 0, "unknown roles"
    self.roles[account] = roles
    log RolesChanged(account=account, roles=roles, by=msg.sender)


@external
def remove(account: address):
    """@notice Revoke every role of `account`; admin only."""
    assert msg.sender == self.admin, "only the admin may remove"
    self.roles[account] = 0
    log RolesChanged(account=account, roles=0, by=msg.sender)


@external
def append(entries: DynArray[Entry, MAX_BATCH]) -> uint256:
    """@notice Append a batch of entries atomically; returns the last sequence number."""
    assert self.roles[msg.sender] & ROLE_OPERATOR != 0, "not an operator"
    assert len(entries) > 0, "empty batch"
    seq: uint256 = self.count
    chain_head: bytes32 = self.head
    for i: uint256 in range(len(entries), bound=MAX_BATCH):
        seq += 1
        version: uint256 = self._advance(entries[i].stream, entries[i].expected_version)
        if entries[i].status != STATUS_NONE:
            self._record(entries[i].stream, entries[i].subject, entries[i].root, entries[i].status, seq)
        leaf: bytes32 = keccak256(
            concat(
                convert(seq, bytes32),
                entries[i].stream,
                convert(version, bytes32),
                entries[i].subject,
                entries[i].root,
                convert(convert(entries[i].status, uint256), bytes32),
                keccak256(entries[i].payload),
            )
        )
        chain_head = keccak256(concat(chain_head, leaf))
        log Appended(
            seq=seq,
            stream=entries[i].stream,
            subject=entries[i].subject,
            version=version,
            root=entries[i].root,
            status=entries[i].status,
            payload=entries[i].payload,
            head=chain_head,
            sender=msg.sender,
        )
    self.count = seq
    self.head = chain_head
    return seq


@internal
def _advance(stream: bytes32, expected: uint256) -> uint256:
    current: uint256 = self.stream_version[stream]
    assert current == expected, "stream version conflict"
    self.stream_version[stream] = current + 1
    return current + 1


@internal
def _record(vm: bytes32, subject: bytes32, root: bytes32, status: uint8, seq: uint256):
    record: Snapshot = self._snapshots[subject]
    assert subject != empty(bytes32), "snapshot id required"
    assert record.status == STATUS_NONE or record.vm == vm, "snapshot belongs to another stream"
    if status == STATUS_PENDING:
        assert record.status == STATUS_NONE, "snapshot already exists"
    elif status == STATUS_COMMITTED:
        assert record.status == STATUS_NONE or record.status == STATUS_PENDING, "snapshot not pending"
        assert root != empty(bytes32), "root required"
        record.root = root
        record.previous = self.latest_snapshot[vm]
        self.latest_snapshot[vm] = subject
        self.live_snapshots[vm] += 1
        self.committed_total[vm] += 1
    elif status == STATUS_FAILED:
        assert record.status == STATUS_PENDING, "snapshot not pending"
    elif status == STATUS_DELETED or status == STATUS_RETIRED:
        assert self.roles[msg.sender] & ROLE_DELETER != 0, "not allowed to delete"
        assert record.status == STATUS_COMMITTED, "snapshot not committed"
        self.live_snapshots[vm] -= 1
        if self.latest_snapshot[vm] == subject:
            self.latest_snapshot[vm] = self._previous_live(record.previous)
        if status == STATUS_RETIRED:
            # Deleted by a retention rule: listed per VM, in order, for auditors.
            index: uint256 = self.retired_count[vm]
            self.retired[vm][index] = subject
            self.retired_count[vm] = index + 1
    else:
        raise "unknown status"
    record.vm = vm
    record.status = status
    record.seq = seq
    record.updated_at = block.timestamp
    record.updated_by = msg.sender
    self._snapshots[subject] = record


@view
@internal
def _previous_live(start: bytes32) -> bytes32:
    cursor: bytes32 = start
    for i: uint256 in range(MAX_WALK):
        if cursor == empty(bytes32) or self._snapshots[cursor].status == STATUS_COMMITTED:
            return cursor
        cursor = self._snapshots[cursor].previous
    return empty(bytes32)


@view
@external
def snapshot(subject: bytes32) -> Snapshot:
    """@notice The audit record of one snapshot: VM stream, root, status, last change."""
    return self._snapshots[subject]
