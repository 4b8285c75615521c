"""Web console and JSON API."""
