"""rc-instagram runtime: realtime client, web receiver, relay, clients and CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rc-instagram")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
