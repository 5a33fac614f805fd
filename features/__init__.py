"""Feature extraction shared by serving and training: one code path, one versioned spec."""
