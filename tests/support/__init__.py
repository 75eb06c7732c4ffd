"""Helpers shared by test packages: small real servers and key material, no mocks."""
