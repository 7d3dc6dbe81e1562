"""Webhook receivers: verify, store durably, answer; the relay works in the background."""
