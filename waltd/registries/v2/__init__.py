"""Docker Registry HTTP API v2: the protocol (pure), the client, and the configured source."""
