"""Rocket.Chat's side of the bridge: DDP framing, the realtime client, the REST wrapper
and the Omnichannel webhook receiver."""
