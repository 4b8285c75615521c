"""Message codes for the API's errors, so the console can show each in the reader's
language: ``{"error": "credential 'app1' already exists", "code": "credential_exists",
"params": {"name": "app1"}}``.  The English ``error`` stays what scripts and logs read.

The texts come from many layers (the queue, the credential store, the compose checks, the
connection test, config validation); rather than each raising its own code, the one table
here recognises them, and ``relaymail.web.http.json_reply`` adds the code to any answer with
an ``error``.  A text no pattern knows gets no code: the console shows it as it is, after its
own word for "error".  The catalogue of translations is relaymail/web/static/*.json
(``err_<code>``, with ``{param}`` placeholders).
"""

from __future__ import annotations

import re
from typing import Any

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern, re.S)) for code, pattern in (
        # console login and first-run setup
        ("login_bad_request", r"expected username and password$"),
        ("login_failed", r"wrong username or password$"),
        ("login_locked", r"too many failed logins; try again in (?P<seconds>\d+) seconds$"),
        ("login_not_set_up", r"no admin password is set yet"),
        ("setup_token", r"wrong or used setup token"),
        ("setup_loopback", r"first-run setup is open only to this host"),
        ("setup_done", r"the admin password is already set"),
        ("setup_mismatch", r"the two passwords differ"),
        ("setup_short", r"password: at least (?P<length>\d+) characters"),
        ("csrf", r"CSRF token missing or wrong$"),
        ("not_logged_in", r"not logged in$"),
        # queue
        ("queue_no_message", r"no message '?(?P<qid>[^']+?)'?$"),
        ("queue_not_held", r"(?P<qid>\S+) is not on hold \(it is in (?P<state>\w+)\)$"),
        ("queue_not_queued", r"(?P<qid>\S+) is not in the queue \(it is in (?P<state>\w+)\)$"),
        ("queue_already_failed", r"(?P<qid>\S+) has already failed$"),
        ("queue_malformed", r"(?P<qid>\S+): malformed envelope"),
        ("unknown_state", r"unknown state (?P<state>\S+)$"),
        ("unknown_action", r"unknown action (?P<action>\S+)$"),
        # credentials
        ("credential_exists", r"credential '(?P<name>.+)' already exists$"),
        ("credential_unknown", r"no credential named '(?P<name>.+)'$"),
        ("credential_bad_name", r"invalid credential name"),
        ("nothing_to_change", r"nothing to change$"),
        ("quota_integer", r"(?P<field>\w+_quota): expected an integer >= 1 or null$"),
        ("unknown_field", r"(?P<field>[\w.]+): unknown field$"),
        ("bad_json", r"(the body is not JSON|expected a JSON object)$"),
        # send form
        ("to_required", r"to: expected one or more addresses$"),
        ("to_too_many", r"to: between 1 and (?P<limit>\d+) addresses$"),
        ("field_address", r"(?P<field>\w+): expected an address$"),
        ("field_ascii_address", r"(?P<field>\w+): .* is not a plain ASCII address$"),
        ("field_single_line", r"(?P<field>\w+): must be a single line$"),
        ("field_text", r"(?P<field>\w+): expected text \(at most (?P<limit>\d+) characters\)$"),
        ("not_queued", r"not queued: (?P<reason>.*)$"),
        # connection test (relaymail.relay.probe)
        ("probe_refused", r"connection refused by (?P<where>\S+): nothing listens there"),
        ("probe_timeout", r"(?P<where>\S+) did not answer in time \((?P<step>[^)]+)\)"),
        ("probe_dns", r"host name (?P<host>\S+) not found in DNS"),
        ("probe_certificate", r"TLS certificate of (?P<where>\S+) is not valid for "
                              r"(?P<host>\S+?)[: ]"),
        ("probe_tls", r"TLS handshake with (?P<where>\S+) failed"),
        ("probe_closed", r"(?P<where>\S+) closed the connection during (?P<step>.+)$"),
        ("probe_token", r"authentication failed: the server refused the access token"),
        ("probe_auth", r"authentication failed: the server rejected the username or password"
                       r"(?: \((?P<reply>.*)\))?$"),
        ("probe_no_starttls", r"the server does not offer STARTTLS"),
        ("probe_answer", r"(?P<step>[\w ()+]+): the server answered (?P<reply>.*)$"),
        ("probe_nothing", r"no upstream given and none configured$"),
        # accounts (relaymail.accounts.fields and the service), before config_field, whose
        # "<key>: <problem>" shape these share
        ("account_disabled", r"this account is disabled$"),
        ("registration_closed", r"registration is closed"),
        ("registration_too_many", r"too many registrations from this address"),
        ("already_registered", r"(?P<field>username|email): already (registered|taken)$"),
        ("accounts_unavailable", r"the accounts database is unavailable"),
        ("invite_needed", r"invite: registration needs an invitation$"),
        ("invite_other", r"invite: this invitation is for another address$"),
        ("invite_unknown", r"invite: unknown or expired invitation$"),
        ("wrong_current_password", r"current_password: wrong password$"),
        ("bad_username", r"username: 3 to 64 letters"),
        ("bad_email", r"(?P<field>\w+): expected an email address$"),
        ("password_short", r"(?P<field>\w*password): at least (?P<length>\d+) characters$"),
        ("password_long", r"(?P<field>\w*password): at most (?P<limit>\d+) bytes"),
        ("quota_range", r"(?P<field>\w+_quota): expected an integer from 1 to (?P<limit>\d+)"),
        ("domain_invalid", r"allowed_sender_domains\[\d+\]: (?P<value>.+) is not a domain or "
                           r"an address$"),
        ("domain_outside", r"allowed_sender_domains: (?P<value>\S+) is not within the "
                           r"account's allowed sender domains$"),
        ("scopes_admin", r"scopes: only an admin can make an admin key$"),
        ("scopes_more", r"scopes: a key cannot make a key with more scopes"),
        ("scopes_list", r"scopes: a non-empty list of"),
        ("field_line", r"(?P<field>\w+): expected a single line of at most (?P<limit>\d+) "
                       r"characters$"),
        ("no_user", r"no user "),
        ("no_such_user", r"user: no such account$"),
        ("no_api_key", r"no API key "),
        ("no_smtp_credential", r"no SMTP credential (?P<name>\S+)$"),
        ("no_password_here", r"only account users have a password to change$"),
        ("forbidden", r"forbidden: this needs "),
        ("accounts_off", r"accounts are not enabled here$"),
        # relay settings (checked like the config file)
        ("password_again", r"password: the saved password of "),
        ("secret_again", r"oauth2\.(?P<field>\w+): the saved one is used only"),
        ("upstreams_empty", r"upstreams: expected a non-empty list$"),
        ("disable_needs_outbox", r"enabled: false needs a maildir or mx transport"),
        ("config_field", r"(?P<key>[a-z_]+(?:\[\d+\])?(?:\.[a-z0-9_]+(?:\[\d+\])?)*): "
                         r"(?P<problem>.+)$"),
    ))


# What config validation says is wrong with a value (``config_field``'s ``problem``).
PROBLEMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern)) for code, pattern in (
        ("non_empty", r"expected a non-empty string"),
        ("port", r"expected a port number"),
        ("rate", r"expected a rate like"),
        ("plaintext_secret", r'"\w+" with a password sends it in plaintext'),
        ("unverified_secret", r"with a password .*(unverified|verify)"),
        ("no_transport", r"names no transport"),
        ("integer", r"expected an integer"),
        ("boolean", r"expected true or false"),
        ("one_of", r"expected one of"),
        ("unknown_key", r"unknown key"),
        ("unknown_preset", r"unknown preset"),
    ))


def classify(message: str) -> tuple[str, dict[str, Any]] | None:
    """The code and parameters of an error text, or None when no pattern knows it."""
    for code, pattern in PATTERNS:
        match = pattern.match(message)
        if match:
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            if code == "config_field":
                problem = next((c for c, p in PROBLEMS if p.match(params["problem"])), None)
                if problem is not None:
                    params["problem_code"] = problem
            return code, params
    return None


def with_code(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``code`` (and ``params``) for its ``error``, when it has one."""
    error = body.get("error")
    if not isinstance(error, str) or not error or "code" in body:
        return body
    known = classify(error)
    if known is None:
        return body
    code, params = known
    return {**body, "code": code, **({"params": params} if params else {})}
