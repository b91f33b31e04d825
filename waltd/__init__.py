"""waltd: provisioning daemon for network-booted testbed nodes."""

__version__ = "0.1.0"
# Integer server version compared with images' `walt.server.minversion` label.
SERVER_VERSION = 1
