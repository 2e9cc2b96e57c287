"""Speculative decoding: proposers draft, the target scores, verifiers accept.

Objects hand each other small frozen dataclasses (:class:`~edgespec.spec.types.Draft`,
:class:`~edgespec.spec.types.Verdict`); a proposer never touches the target's cache.
"""
