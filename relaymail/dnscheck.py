"""``relaymail dns-check DOMAIN``: what receivers will look up for mail from DOMAIN (MX, SPF,
DKIM, DMARC), compared with this relay's config, and the records to add where they fall short.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import dns.exception
import dns.resolver

from relaymail.config import Config, load_config
from relaymail.policy.dkim import DkimKey, build_signer
from relaymail.relay.mx import make_resolver
from relaymail.relay.presets import PRESETS

Lookup = Callable[[str, str], list[str]]


@dataclass
class Finding:
    check: str  # MX, SPF, DKIM or DMARC
    ok: bool
    detail: str
    fix: str = ""  # the record to publish, when something is missing or wrong


def dns_lookup(resolver: dns.resolver.Resolver) -> Lookup:
    """(name, type) -> record texts; [] for NXDOMAIN or no answer."""
    def lookup(name: str, rdtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        if rdtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text() for r in answer]
    return lookup


def spf_includes(config: Config) -> tuple[list[str], list[str]]:
    """The SPF includes the configured providers need, and upstream hosts we cannot tell."""
    includes: list[str] = []
    unknown: list[str] = []
    for transport in config.transports.values():
        for upstream in transport.upstreams:
            preset = PRESETS.get(upstream.preset or "")
            if preset is not None and preset.spf:
                if preset.spf not in includes:
                    includes.append(preset.spf)
            elif preset is None:
                unknown.append(upstream.host)
    return includes, unknown


def check_mx(domain: str, lookup: Lookup) -> Finding:
    records = lookup(domain, "MX")
    if not records:
        return Finding("MX", False, "no MX record: replies and bounces to this domain cannot "
                                    "arrive", f"{domain}. IN MX 10 <your inbound mail host>.")
    if any(r.split()[-1] == "." for r in records):
        return Finding("MX", False, "null MX (RFC 7505): the domain accepts no mail, so "
                                    "bounces to it are lost")
    return Finding("MX", True, ", ".join(sorted(records)))


def check_spf(domain: str, lookup: Lookup, needed: list[str], unknown: list[str],
              direct: bool) -> Finding:
    records = [r for r in lookup(domain, "TXT") if r.lower().startswith("v=spf1")]
    extra = ["ip4:<this relay's public IP>"] if direct else []
    note = f" (also add what {', '.join(unknown)} document)" if unknown else ""
    if len(records) > 1:
        return Finding("SPF", False, f"{len(records)} SPF records: receivers treat that as an "
                                     "error (RFC 7208 4.5); merge them into one",
                       spf_record(domain, [], needed, extra))
    if not records:
        return Finding("SPF", False, "no SPF record" + note,
                       spf_record(domain, [], needed, extra))
    terms = records[0].split()
    missing = [i for i in needed if f"include:{i}" not in terms]
    if missing:
        return Finding("SPF", False, f"{records[0]!r} lacks include:{', include:'.join(missing)}"
                       + note, spf_record(domain, terms[1:], missing, []))
    return Finding("SPF", True, records[0] + note)


def spf_record(domain: str, current: list[str], includes: list[str], extra: list[str]) -> str:
    """One SPF record: the current terms (without ``all``) plus what is missing, then ~all."""
    kept = [t for t in current if t.lstrip("+-~?").lower() != "all"]
    ending = next((t for t in current if t.lstrip("+-~?").lower() == "all"), "~all")
    terms = ["v=spf1", *kept, *(f"include:{i}" for i in includes), *extra, ending]
    return f'{domain}. IN TXT "{" ".join(terms)}"'


def check_dkim(domain: str, lookup: Lookup, keys: list[DkimKey]) -> list[Finding]:
    if not keys:
        return [Finding("DKIM", False, "no signing key configured for this domain",
                        f"relaymail dkim keygen --domain {domain} --selector mail")]
    out = []
    for key in keys:
        name = f"{key.selector}._domainkey.{key.domain}"
        published = [r for r in lookup(name, "TXT") if "p=" in r]
        wanted = key.public_key_b64()
        fix = f'{name}. IN TXT "{key.dns_record()}"'
        if not published:
            out.append(Finding("DKIM", False, f"{name}: not published", fix))
        elif not any(tag_value(r, "p") == wanted for r in published):
            out.append(Finding("DKIM", False, f"{name}: the published key is not the one in "
                                              "the config", fix))
        else:
            out.append(Finding("DKIM", True, f"{name}: matches {key.algorithm} key"))
    return out


def tag_value(record: str, tag: str) -> str:
    for part in record.split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip() == tag:
            return "".join(value.split())
    return ""


def check_dmarc(domain: str, lookup: Lookup) -> Finding:
    name = f"_dmarc.{domain}"
    records = [r for r in lookup(name, "TXT") if r.lower().startswith("v=dmarc1")]
    if not records:
        return Finding("DMARC", False, "no DMARC policy",
                       f'{name}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"')
    return Finding("DMARC", True, f"{records[0]} (policy {tag_value(records[0], 'p') or '?'})")


def run_checks(domain: str, config: Config, lookup: Lookup) -> list[Finding]:
    domain = domain.lower().rstrip(".")
    needed, unknown = spf_includes(config)
    direct = any(t.type == "mx" for t in config.transports.values())
    signer = build_signer(config.dkim, config.path, lambda: 0)
    keys = signer.keys_for(domain) if signer else []
    findings = [check_mx(domain, lookup), check_spf(domain, lookup, needed, unknown, direct)]
    findings += check_dkim(domain, lookup, keys)
    findings.append(check_dmarc(domain, lookup))
    return findings


def add_parser(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser("dns-check", help="check MX, SPF, DKIM and DMARC for a domain")
    check.add_argument("domain")
    check.add_argument("--nameserver", action="append", default=[],
                       help="ask this server (IP[:port]) instead of the system resolver")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=cmd_dns_check)


def cmd_dns_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    lookup = dns_lookup(make_resolver(args.nameserver or None, timeout=10))
    try:
        findings = run_checks(args.domain, config, lookup)
    except dns.exception.DNSException as e:
        print(f"relaymail: DNS lookup failed: {e}")
        return 2
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2, ensure_ascii=False))
    else:
        for f in findings:
            print(f"[{'ok' if f.ok else 'FIX'}] {f.check}: {f.detail}")
            if f.fix:
                print(f"      add: {f.fix}")
    return 0 if all(f.ok for f in findings) else 1
