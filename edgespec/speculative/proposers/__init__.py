"""Proposer implementations, registered lazily in :data:`edgespec.speculative.base.PROPOSERS`."""
