"""Provider presets: the documented host, port and TLS mode of common submission services,
and for the providers that want OAuth2 (Microsoft, Google) their token endpoints and scopes,
so that an upstream needs only a client_id (and secret or tenant) and the mailbox."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class OAuth2Defaults:
    """A provider's OAuth2 endpoints and SMTP scopes; ``{tenant}`` in a URL is replaced by
    the upstream's ``oauth2.tenant`` (or ``tenant`` here)."""

    token_url: str
    scope: str  # delegated: a user signed in once (refresh_token grant)
    authorize_url: str | None = None
    device_url: str | None = None
    app_scope: str | None = None  # client_credentials grant; None: the provider has none
    tenant: str | None = None  # the default tenant in the URLs
    authorize_params: tuple[tuple[str, str], ...] = ()  # extra query for the code flow

    def settings(self, grant: str, tenant: str | None) -> dict[str, str | None]:
        """token_url, authorize_url, device_url and scope for ``grant`` and ``tenant``."""
        tenant = tenant or self.tenant or ""

        def fill(url: str | None) -> str | None:
            """``url`` with the tenant put in."""
            return None if url is None else url.replace("{tenant}", tenant)

        return {"token_url": fill(self.token_url), "authorize_url": fill(self.authorize_url),
                "device_url": fill(self.device_url),
                "scope": self.app_scope if grant == "client_credentials" else self.scope}


MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
MICROSOFT = OAuth2Defaults(
    token_url=f"{MICROSOFT_LOGIN}/token", authorize_url=f"{MICROSOFT_LOGIN}/authorize",
    device_url=f"{MICROSOFT_LOGIN}/devicecode",
    scope="https://outlook.office.com/SMTP.Send offline_access",
    app_scope="https://outlook.office365.com/.default", tenant="common")
MICROSOFT_PERSONAL = replace(MICROSOFT, tenant="consumers", app_scope=None)
GOOGLE = OAuth2Defaults(
    token_url="https://oauth2.googleapis.com/token",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    device_url="https://oauth2.googleapis.com/device/code", scope="https://mail.google.com/",
    authorize_params=(("access_type", "offline"), ("prompt", "consent")))

MICROSOFT_NOTE = ("OAuth2: register an app in Microsoft Entra ID; give oauth2.client_id (and "
                  "tenant), then run `relaymail oauth2 authorize`; SMTP AUTH must be enabled "
                  "for the mailbox")
GOOGLE_NOTE = ("OAuth2 (oauth2.client_id and client_secret of a Desktop app client, then "
               "`relaymail oauth2 authorize`), or an app password with 2-step verification")
AUTHORIZATION_CODE = ("mailbox and its authorization code (授权码: enable SMTP in the "
                      "mailbox's settings), not the web login password")
ALIYUN_NOTE = "the sender address created in the DirectMail console and its SMTP password"
TENCENT_NOTE = "the sender address created in the SES console and its SMTP password"


@dataclass(frozen=True)
class Preset:
    """One provider's submission endpoint; ``label`` is shown in the console, ``auth_note``
    says what to log in with, ``oauth2`` holds the OAuth2 defaults where there are any."""

    name: str
    label: str
    host: str
    port: int
    tls: str
    spf: str | None = None  # the SPF include for your domain; None: no own-domain sending
    auth_note: str = "username and password"
    oauth2: OAuth2Defaults | None = None
    # The sender rule the provider enforces: "login" (envelope sender and header From must
    # be the login mailbox; MAIL FROM:<> refused too), "domain" (any address in the login's
    # domain), "verified" (addresses or domains verified in the provider's console).
    sender_rule: str = "verified"
    max_connections: int | None = None  # a documented cap on sessions at once

    def as_upstream(self) -> dict[str, object]:
        """The upstream keys this preset fills in (the upstream's own keys win)."""
        fields: dict[str, object] = {"host": self.host, "port": self.port, "tls": self.tls}
        if self.max_connections is not None:
            fields["max_connections"] = self.max_connections
        return fields


AMAZON_SES_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1",
    "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "ap-south-1",
    "ap-southeast-1", "ap-southeast-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "sa-east-1", "me-south-1", "af-south-1",
)

_BASE = (
    Preset("tencent-ses", "Tencent Cloud SES / 腾讯云邮件推送 (Hong Kong)",
           "smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com", TENCENT_NOTE,
           sender_rule="login"),
    Preset("tencent-ses-gz", "Tencent Cloud SES / 腾讯云邮件推送 (广州 Guangzhou)",
           "gz-smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com", TENCENT_NOTE,
           sender_rule="login"),
    Preset("tencent-ses-sg", "Tencent Cloud SES (Singapore / 新加坡)",
           "sg-smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com", TENCENT_NOTE,
           sender_rule="login"),
    Preset("qq", "QQ Mail / QQ 邮箱", "smtp.qq.com", 465, "implicit", None,
           AUTHORIZATION_CODE, sender_rule="login"),
    Preset("exmail-qq", "Tencent Exmail / 腾讯企业邮", "smtp.exmail.qq.com", 465, "implicit",
           "spf.mail.qq.com", "mailbox and password (or a client-specific password)",
           sender_rule="login"),
    Preset("163", "NetEase 163 / 网易 163 邮箱", "smtp.163.com", 465, "implicit", None,
           AUTHORIZATION_CODE, sender_rule="login"),
    Preset("126", "NetEase 126 / 网易 126 邮箱", "smtp.126.com", 465, "implicit", None,
           AUTHORIZATION_CODE, sender_rule="login"),
    Preset("aliyun", "Aliyun DirectMail / 阿里云邮件推送 (杭州 Hangzhou)", "smtpdm.aliyun.com", 465,
           "implicit", "spf1.dm.aliyun.com", ALIYUN_NOTE,
           sender_rule="login"),
    Preset("aliyun-ap-southeast-1", "Aliyun DirectMail (Singapore / 新加坡)",
           "smtpdm-ap-southeast-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com", ALIYUN_NOTE,
           sender_rule="login"),
    Preset("aliyun-us-east-1", "Aliyun DirectMail (US Virginia / 美国弗吉尼亚)",
           "smtpdm-us-east-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com", ALIYUN_NOTE,
           sender_rule="login"),
    Preset("aliyun-eu-central-1", "Aliyun DirectMail (Frankfurt / 法兰克福)",
           "smtpdm-eu-central-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com", ALIYUN_NOTE,
           sender_rule="login"),
    Preset("gmail", "Gmail / Google Workspace", "smtp.gmail.com", 587, "starttls",
           "_spf.google.com", GOOGLE_NOTE, GOOGLE, sender_rule="login"),
    Preset("outlook", "Outlook / Microsoft 365", "smtp.office365.com", 587, "starttls",
           "spf.protection.outlook.com", MICROSOFT_NOTE, MICROSOFT, sender_rule="login",
           max_connections=3),
    Preset("outlook-com", "Outlook.com / Hotmail (personal account)", "smtp-mail.outlook.com",
           587, "starttls", None, "OAuth2 (Microsoft is ending passwords for SMTP): "
           "oauth2.client_id, then `relaymail oauth2 authorize`", MICROSOFT_PERSONAL,
           sender_rule="login", max_connections=3),
    Preset("sendgrid", "SendGrid", "smtp.sendgrid.net", 587, "starttls", "sendgrid.net",
           "username \"apikey\" and an API key as the password"),
    Preset("mailgun", "Mailgun", "smtp.mailgun.org", 587, "starttls", "mailgun.org",
           "the domain's SMTP login (postmaster@your-domain) and its password",
           sender_rule="domain"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in _BASE} | {
    f"amazon-ses-{region}": Preset(
        f"amazon-ses-{region}", f"Amazon SES ({region})",
        f"email-smtp.{region}.amazonaws.com", 587, "starttls", "amazonses.com",
        "SMTP credentials made in the SES console (not AWS access keys); the sender "
        "address or domain must be verified there",
    )
    for region in AMAZON_SES_REGIONS
}
