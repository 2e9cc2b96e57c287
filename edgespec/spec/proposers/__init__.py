"""Proposer implementations, registered lazily in :data:`edgespec.spec.base.PROPOSERS`."""
