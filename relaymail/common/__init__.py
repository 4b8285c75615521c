"""Vocabulary shared by the inbound side, the relay, the policies and the console:
replies with enhanced status codes (replies.py), addresses (addresses.py), networks and
connection counts (networks.py), the TLS profile (tls.py).  It imports none of them."""
