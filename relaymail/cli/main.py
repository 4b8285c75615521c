"""The ``relaymail`` command: config check, credentials, and the queue (see queuecli)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence

from relaymail.accounts.backup import BackupError
from relaymail.accounts.database import shown
from relaymail.cli.backup import add_parser as add_backup_parser
from relaymail.cli.dkim import add_parser as add_dkim_parser
from relaymail.cli.oauth2 import add_parser as add_oauth2_parser
from relaymail.cli.queue import CommandError
from relaymail.cli.queue import add_parser as add_queue_parser
from relaymail.cli.suppression import SuppressionCommandError
from relaymail.cli.suppression import add_parser as add_suppression_parser
from relaymail.config import Config, ConfigError, check_runtime, load_config
from relaymail.credentials import CredentialsError, CredentialStore, hash_password
from relaymail.dnscheck import add_parser as add_dns_check_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ConfigError, CredentialsError, CommandError, SuppressionCommandError,
            BackupError) as e:
        print(f"relaymail: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaymail", description="relaymail administration")
    parser.add_argument("--config", "-c", default="etc/relay.json", help="config file path")
    sub = parser.add_subparsers(title="commands")

    check = sub.add_parser("check-config", help="validate the config file and exit")
    check.set_defaults(run=cmd_check_config)

    creds = sub.add_parser("credentials", help="manage SMTP AUTH credentials")
    csub = creds.add_subparsers(title="credential commands")
    add = csub.add_parser("add", help="create a credential; prints its password once")
    add.add_argument("name")
    add.add_argument("--sender-domain", action="append", default=[], dest="domains",
                     help="allowed sender domain or address (repeatable)")
    add.add_argument("--hourly-quota", type=int)
    add.add_argument("--daily-quota", type=int)
    add.add_argument("--description", default="")
    add.add_argument("--check-header-from", action="store_true",
                     help="require the header From to be in the envelope sender's domain")
    add.set_defaults(run=cmd_credentials_add)
    change = csub.add_parser("set", help="change a credential's limits (0 removes a quota)")
    change.add_argument("name")
    change.add_argument("--sender-domain", action="append", dest="domains",
                        help="replace the allowed sender domains/addresses (repeatable)")
    change.add_argument("--hourly-quota", type=int)
    change.add_argument("--daily-quota", type=int)
    change.add_argument("--check-header-from", action=argparse.BooleanOptionalAction)
    change.add_argument("--enabled", action=argparse.BooleanOptionalAction)
    change.set_defaults(run=cmd_credentials_set)
    listing = csub.add_parser("list", help="list credentials (never their passwords)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_credentials_list)
    reset = csub.add_parser("reset", help="generate a new password; prints it once")
    reset.add_argument("name")
    reset.set_defaults(run=cmd_credentials_reset)
    remove = csub.add_parser("remove", help="delete a credential")
    remove.add_argument("name")
    remove.set_defaults(run=cmd_credentials_remove)

    add_queue_parser(sub)
    add_suppression_parser(sub)
    add_dkim_parser(sub)
    add_backup_parser(sub)
    add_dns_check_parser(sub)
    add_oauth2_parser(sub)

    hashpw = sub.add_parser("hash-password", help="print a bcrypt hash of a password "
                                                  "read from the terminal or stdin")
    hashpw.set_defaults(run=cmd_hash_password)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_runtime(config)
    listeners = ", ".join(f"{x.name}={x.endpoint}" for x in config.smtp.listeners)
    workers = (f"{config.smtp.workers} acceptor process(es)" if config.smtp.workers
               else "sessions in the main process")
    print(f"{args.config}: ok (listeners: {listeners}; {workers}; spool: {config.spool_dir})")
    hooks = ", ".join(f"{h.name} ({len(h.events)} events)" for h in config.webhooks) or "none"
    suppression = "on" if config.suppression.enabled else "off"
    if config.suppression.enabled and config.suppression.auto:
        suppression += ", hard bounces added"
    archive = (f"on, {config.archive.retention_days:g} days, {config.archive.max_bytes} bytes"
               if config.archive.enabled else "off")
    print(f"webhooks: {hooks}; suppression list: {suppression}; archive: {archive}")
    accounts = config.accounts
    print(f"accounts: {shown(accounts.database)} "
          f"({'PostgreSQL' if accounts.shared else 'SQLite'}); registration "
          f"{accounts.registration}")
    return 0


def store_for(args: argparse.Namespace) -> CredentialStore:
    config: Config = load_config(args.config)
    return CredentialStore(config.credentials_file)


def cmd_credentials_add(args: argparse.Namespace) -> int:
    """A name that is an address restricts the login to its domain unless domains are
    given; a login left unrestricted says so."""
    store = store_for(args)
    password = store.add(
        args.name, allowed_sender_domains=args.domains, hourly_quota=args.hourly_quota,
        daily_quota=args.daily_quota, description=args.description,
        check_header_from=args.check_header_from)
    print(f"created {args.name}; password (shown once): {password}")
    warning = store.unrestricted_warning(args.name)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_credentials_list(args: argparse.Namespace) -> int:
    items = [c.public() for c in store_for(args).all()]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'NAME':<24} {'ENABLED':<8} {'HOURLY':>7} {'DAILY':>7}  SENDER DOMAINS")
    for c in items:
        print(f"{c['name']:<24} {'yes' if c['enabled'] else 'no':<8} "
              f"{c['hourly_quota'] or '-':>7} {c['daily_quota'] or '-':>7}  "
              f"{', '.join(c['allowed_sender_domains']) or '(any)'}")
    return 0


def cmd_credentials_set(args: argparse.Namespace) -> int:
    changes: dict[str, object] = {}
    if args.domains is not None:
        changes["allowed_sender_domains"] = args.domains
    for key in ("hourly_quota", "daily_quota"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key) or None  # 0: no quota of its own
    for key in ("check_header_from", "enabled"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if not changes:
        print("relaymail: nothing to change", file=sys.stderr)
        return 2
    credential = store_for(args).update(args.name, **changes)
    print(f"updated {args.name}: " + ", ".join(f"{k}={getattr(credential, k)}"
                                                for k in changes))
    return 0


def cmd_credentials_reset(args: argparse.Namespace) -> int:
    password = store_for(args).reset(args.name)
    print(f"reset {args.name}; new password (shown once): {password}")
    return 0


def cmd_credentials_remove(args: argparse.Namespace) -> int:
    store_for(args).remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():  # typed: asked twice, as passwd does
        password = getpass.getpass("Password: ")
        if password and getpass.getpass("Again: ") != password:
            print("relaymail: the passwords differ; nothing printed", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("relaymail: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
