"""Integrations of the tracker with other libraries: metrics, frameworks."""
