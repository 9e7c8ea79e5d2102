"""Data access: SQL as named constants, functions that take a tenant-scoped connection.

Callers obtain the connection from `core.tenancy.tenant_tx`; nothing here sets the org.
"""
