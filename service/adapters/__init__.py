"""Adapters between MTAs and the scorer: each protocol's transaction in, the same decision out.

`replies` is the one place the SMTP reply text comes from; the protocols (`milter`, and
the Rspamd-compatible and policy adapters) turn a `ScoreResult` into their own answers
with it. docs/relay-integration.md says how each MTA is wired.
"""
