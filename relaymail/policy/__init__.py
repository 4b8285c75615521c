"""Policy applied at acceptance: DKIM signing, rate limits and quotas, AUTH lockouts."""
