"""Content fingerprints in the service: known-spam signatures and campaigns across accounts."""
