"""The outguard service: HTTP API, identity, decisions and actions."""
