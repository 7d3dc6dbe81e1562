"""Meta's side of the bridge: the Graph API client, Facebook Login, webhook parsing, the
Instagram webhook receiver and re-authorization."""
