"""relaymail: a store-and-forward SMTP relay (smart host) on Twisted."""

__version__ = "0.1.0"
