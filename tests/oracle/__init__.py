"""Protocol oracle: requests checked against Rocket.Chat's published REST validators."""
