"""Vyper sources of the on-chain ledger and the loader that compiles them."""

from contracts.loader import CompiledContract, CompileFailed, load

__all__ = ["CompileFailed", "CompiledContract", "load"]
