"""Inbound side: the ESMTP listeners, their access rules and the per-transaction spool writer."""
