"""Webhooks: signed event notifications delivered from a durable outbox, never on the scoring path."""
