"""Outbound side: routing, transports, provider presets."""
