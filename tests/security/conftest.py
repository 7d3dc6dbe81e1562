"""Security tests share the root fixtures (meta, bridge, oauth): see tests/conftest.py."""
