"""Relay: durable work queues between Instagram and Rocket.Chat Omnichannel."""
