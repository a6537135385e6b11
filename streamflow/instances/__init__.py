"""Instances: one deployment of an integration per customer, and the vault that seals
their secrets."""
