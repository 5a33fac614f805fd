"""The web dashboard: pages (`routes`), their data (`data`) and charts (`charts`)."""
