"""Model bundles: the format the service loads, and the shipped default under default/."""
