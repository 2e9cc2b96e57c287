"""Speculative decoding: proposers draft, the target scores, verifiers accept.

Objects hand each other small frozen dataclasses (:class:`~edgespec.speculative.types.Draft`,
:class:`~edgespec.speculative.types.Verdict`); a proposer never touches the target's cache.
"""
