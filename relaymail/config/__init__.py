"""Configuration: defaults, then the JSON file, then environment overrides, then validation.

The result is a tree of frozen dataclasses.  Every error names the file, the key path and
the offending value, so that an operator can fix it without reading a traceback.

The package is a leaf: it imports nothing from relaymail.relay, .smtp, .policy or .web.

- :mod:`~relaymail.config.check`: :class:`ConfigError` and :class:`Check`, the typed
  accessors every validator reads through;
- :mod:`~relaymail.config.defaults`: every default, in one table;
- :mod:`~relaymail.config.load`: reading, merging, environment overrides, :func:`validate`
  and the root :class:`Config`;
- one module per section: :mod:`~relaymail.config.smtp`, :mod:`~relaymail.config.routes`,
  :mod:`~relaymail.config.transports` (with :mod:`~relaymail.config.oauth2` and the provider
  :mod:`~relaymail.config.presets`), :mod:`~relaymail.config.delivery`,
  :mod:`~relaymail.config.dkim`, :mod:`~relaymail.config.rate_limits`,
  :mod:`~relaymail.config.web`;
- :mod:`~relaymail.config.startup`: the checks made at startup (files, port overlap).

Everything is re-exported here, so ``from relaymail.config import X`` keeps working.
"""

from relaymail.config.check import Check, ConfigError, IPNetwork
from relaymail.config.defaults import DEFAULTS
from relaymail.config.delivery import DeliveryConfig, validate_delivery
from relaymail.config.dkim import validate_dkim
from relaymail.config.load import (
    ENV_PREFIX,
    LOG_LEVELS,
    Config,
    LogConfig,
    apply_env_overrides,
    config_from_document,
    find_env_target,
    load_config,
    merge_defaults,
    parse_env_value,
    read_json_file,
    validate,
    validate_hostname,
)
from relaymail.config.oauth2 import (
    OAUTH2_KEYS,
    OAuth2Config,
    validate_oauth2,
    validate_tenant,
    validate_url,
)
from relaymail.config.presets import PRESETS
from relaymail.config.rate_limits import validate_rate_limits
from relaymail.config.routes import (
    DOMAIN_PATTERN,
    RouteConfig,
    domain_matches,
    patterns,
    validate_routes,
)
from relaymail.config.smtp import (
    AUTH_MODES,
    ENDPOINT_KINDS,
    LISTENER_KEYS,
    TLS_MODES,
    ListenerConfig,
    SMTPConfig,
    TLSConfig,
    check_unique_names,
    control_characters,
    endpoint_address,
    endpoint_problem,
    split_endpoint,
    validate_endpoint,
    validate_fold_length,
    validate_listener,
    validate_proxy_trust,
    validate_smtp,
)
from relaymail.config.startup import check_port_overlap, check_runtime
from relaymail.config.transports import (
    ADDRESS_RE,
    RATE_UNITS,
    SENDER_REWRITE_KEYS,
    TRANSPORT_KEYS,
    TRANSPORT_TYPES,
    UPSTREAM_KEYS,
    UPSTREAM_TLS_MODES,
    SenderRewrite,
    TransportConfig,
    UpstreamConfig,
    check_auth_security,
    parse_rate,
    preset_sender_rule,
    validate_address,
    validate_sender_rewrite,
    validate_transports,
    validate_upstream,
)
from relaymail.config.web import (
    WebConfig,
    validate_allowed_hosts,
    validate_web,
    validate_web_tls,
)

__all__ = [
    "ADDRESS_RE", "AUTH_MODES", "DEFAULTS", "DOMAIN_PATTERN", "ENDPOINT_KINDS", "ENV_PREFIX",
    "LISTENER_KEYS", "LOG_LEVELS", "OAUTH2_KEYS", "PRESETS", "RATE_UNITS",
    "SENDER_REWRITE_KEYS", "TLS_MODES", "TRANSPORT_KEYS", "TRANSPORT_TYPES", "UPSTREAM_KEYS",
    "UPSTREAM_TLS_MODES", "Check", "Config", "ConfigError", "DeliveryConfig", "IPNetwork",
    "ListenerConfig", "LogConfig", "OAuth2Config", "RouteConfig", "SMTPConfig",
    "SenderRewrite", "TLSConfig", "TransportConfig", "UpstreamConfig", "WebConfig",
    "apply_env_overrides", "check_auth_security", "check_port_overlap", "check_runtime",
    "check_unique_names", "config_from_document", "control_characters", "domain_matches",
    "endpoint_address", "endpoint_problem", "find_env_target", "load_config",
    "merge_defaults", "parse_env_value", "parse_rate", "patterns", "preset_sender_rule",
    "read_json_file", "split_endpoint", "validate", "validate_address",
    "validate_allowed_hosts", "validate_delivery", "validate_dkim", "validate_endpoint",
    "validate_fold_length", "validate_hostname", "validate_listener", "validate_oauth2",
    "validate_proxy_trust", "validate_rate_limits", "validate_routes",
    "validate_sender_rewrite", "validate_smtp", "validate_tenant", "validate_transports",
    "validate_upstream", "validate_url", "validate_web", "validate_web_tls",
]
