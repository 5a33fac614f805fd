"""Human-readable reports: the incident report of one account."""
