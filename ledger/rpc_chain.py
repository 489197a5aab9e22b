"""A chain reached over Ethereum JSON-RPC (anvil, geth, Besu) through web3.py."""

from __future__ import annotations

from typing import Any

from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from ledger.chain import BlockRef, Chain, RawLog, Receipt
from ledger.errors import ChainError, TransactionReverted

LOG_WINDOW = 5_000


class RpcChain(Chain):
    """A JSON-RPC node; the node, not this process, keeps the chain durable."""

    backend = "rpc"

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self._timeout = timeout
        self._w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout}))
        try:
            self.chain_id = int(self._w3.eth.chain_id)
        except (OSError, Web3Exception) as err:
            raise ChainError(f"cannot reach the chain at {url}: {err}") from err

    def submit(self, raw_tx: bytes) -> Receipt:
        """Send the transaction and wait for it to be mined."""
        try:
            tx_hash = self._w3.eth.send_raw_transaction(raw_tx)
            receipt = self._w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._timeout, poll_latency=0.05
            )
        except TimeExhausted as err:
            raise ChainError(f"transaction not mined within {self._timeout:g} s") from err
        except (OSError, Web3Exception) as err:
            raise ChainError(f"the chain at {self.url} refused the transaction: {err}") from err
        return _receipt(receipt)

    def call(self, sender: bytes, to: bytes, data: bytes) -> bytes:
        """Run an eth_call at the latest block."""
        request: Any = {
            "from": Web3.to_checksum_address(sender),
            "to": Web3.to_checksum_address(to),
            "data": data,
        }
        try:
            return bytes(self._w3.eth.call(request, "latest"))
        except ContractLogicError as err:
            text = str(err.message or err)
            raise TransactionReverted(text.removeprefix("execution reverted: ")) from err
        except (OSError, Web3Exception) as err:
            raise ChainError(f"call to the chain at {self.url} failed: {err}") from err

    def nonce(self, account: bytes) -> int:
        """Return the pending nonce of `account`."""
        return int(self._w3.eth.get_transaction_count(Web3.to_checksum_address(account), "pending"))

    def balance(self, account: bytes) -> int:
        """Return the account's balance at the latest block."""
        try:
            return int(self._w3.eth.get_balance(Web3.to_checksum_address(account), "latest"))
        except (OSError, Web3Exception) as err:
            raise ChainError(f"the chain at {self.url} did not answer: {err}") from err

    def fee_caps(self) -> tuple[int, int]:
        """Twice the latest base fee plus the node's suggested tip."""
        block = self._w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0))
        tip = int(self._w3.eth.max_priority_fee)
        return 2 * base + tip, tip

    def gas_limit(self) -> int:
        """Return the latest block's gas limit."""
        return int(self._w3.eth.get_block("latest")["gasLimit"])

    def head(self) -> BlockRef:
        """Return the latest block."""
        block = self._w3.eth.get_block("latest")
        return BlockRef(int(block["number"]), bytes(block["hash"]), int(block["timestamp"]))

    def logs(self, address: bytes, from_block: int, to_block: int) -> list[RawLog]:
        """Fetch logs in windows the node accepts."""
        found: list[RawLog] = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + LOG_WINDOW - 1)
            params: Any = {
                "address": Web3.to_checksum_address(address),
                "fromBlock": start,
                "toBlock": end,
            }
            found.extend(_raw_log(entry) for entry in self._w3.eth.get_logs(params))
            start = end + 1
        return found

    def close(self) -> None:
        """Nothing to release: HTTP connections are per request."""


def _raw_log(entry: Any) -> RawLog:
    return RawLog(
        address=bytes.fromhex(str(entry["address"])[2:]),
        topics=tuple(bytes(t) for t in entry["topics"]),
        data=bytes(entry["data"]),
        block_number=int(entry["blockNumber"]),
        tx_hash=bytes(entry["transactionHash"]),
        log_index=int(entry["logIndex"]),
    )


def _receipt(receipt: Any) -> Receipt:
    created = receipt.get("contractAddress")
    return Receipt(
        tx_hash=bytes(receipt["transactionHash"]),
        status=int(receipt["status"]),
        block_number=int(receipt["blockNumber"]),
        block_hash=bytes(receipt["blockHash"]),
        gas_used=int(receipt["gasUsed"]),
        contract_address=bytes.fromhex(str(created)[2:]) if created else None,
        logs=tuple(_raw_log(entry) for entry in receipt["logs"]),
    )
