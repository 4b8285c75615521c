"""Packaging for relaymail: flat layout, plus our twistd plugin under twisted/plugins."""

from setuptools import find_packages, setup

setup(
    name="relaymail",
    version="0.1.0",
    description="Store-and-forward SMTP relay (smart host) on Twisted",
    python_requires=">=3.11",
    packages=[*find_packages(include=["relaymail", "relaymail.*"]), "twisted.plugins"],
    package_data={"relaymail": ["py.typed"], "relaymail.smtp": ["ffdhe2048.pem"],
                  "relaymail.web": ["static/*"],
                  "relaymail.accounts": ["migrations/*.py", "migrations/*.mako",
                                         "migrations/versions/*.py"]},
    install_requires=[
        # relaymail uses private attributes of Twisted's SMTP client (_expected,
        # _okresponse, _failresponse, _authinfo, _tlsMode, _esmtpState_plainAuth):
        # tests/test_twisted_guard.py checks them; raise the bound only after it passes.
        "twisted[tls]>=24.7,<27",
        "pyopenssl",
        "service-identity",
        "cryptography",
        "dnspython>=2.6",
        "dkimpy",
        "klein",
        "treq",
        "bcrypt",
        "idna",
        "redis>=5",
        "prometheus_client",
        "sqlalchemy>=2",  # the accounts database (SQLite or PostgreSQL), Core only
        "alembic",  # its versioned migrations
        "psycopg[binary]>=3.1",  # PostgreSQL, when accounts.database is a postgresql:// URL
    ],
    extras_require={
        "test": ["pytest", "aiosmtpd", "trustme", "hypothesis", "ruff", "mypy", "mypy-zope",
                 "pynacl",  # dkimpy verifies Ed25519 signatures with it
                 "playwright"],  # drives Debian's chromium in the console test
    },
    entry_points={"console_scripts": ["relaymail = relaymail.cli:main"]},
)
