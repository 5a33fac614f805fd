"""Feedback ingestion: what happened to mail after it left, turned into events, engagement and labels."""
