"""Shared utilities below connectors, observability and triggers: secret masking, SQL
database access (PostgreSQL, MySQL/MariaDB, SQLite), connection pool settings, the clock,
event payload files."""
