"""difflab ↔ other projects' weights."""
