"""Provider presets: the documented host, port and TLS mode of common submission services."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """One provider's submission endpoint; ``label`` is shown in the console."""

    name: str
    label: str
    host: str
    port: int
    tls: str
    spf: str | None = None  # the SPF include for your domain; None: no own-domain sending

    def as_upstream(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "tls": self.tls}


AMAZON_SES_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1",
    "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "ap-south-1",
    "ap-southeast-1", "ap-southeast-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "sa-east-1", "me-south-1", "af-south-1",
)

_BASE = (
    Preset("tencent-ses", "Tencent Cloud SES / 腾讯云邮件推送 (Hong Kong)",
           "smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com"),
    Preset("tencent-ses-gz", "Tencent Cloud SES / 腾讯云邮件推送 (广州 Guangzhou)",
           "gz-smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com"),
    Preset("tencent-ses-sg", "Tencent Cloud SES (Singapore / 新加坡)",
           "sg-smtp.qcloudmail.com", 465, "implicit", "qcloudmail.com"),
    Preset("qq", "QQ Mail / QQ 邮箱", "smtp.qq.com", 465, "implicit"),
    Preset("exmail-qq", "Tencent Exmail / 腾讯企业邮", "smtp.exmail.qq.com", 465, "implicit",
           "spf.mail.qq.com"),
    Preset("163", "NetEase 163 / 网易 163 邮箱", "smtp.163.com", 465, "implicit"),
    Preset("126", "NetEase 126 / 网易 126 邮箱", "smtp.126.com", 465, "implicit"),
    Preset("aliyun", "Aliyun DirectMail / 阿里云邮件推送 (杭州 Hangzhou)", "smtpdm.aliyun.com", 465,
           "implicit", "spf1.dm.aliyun.com"),
    Preset("aliyun-ap-southeast-1", "Aliyun DirectMail (Singapore / 新加坡)",
           "smtpdm-ap-southeast-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com"),
    Preset("aliyun-us-east-1", "Aliyun DirectMail (US Virginia / 美国弗吉尼亚)",
           "smtpdm-us-east-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com"),
    Preset("aliyun-eu-central-1", "Aliyun DirectMail (Frankfurt / 法兰克福)",
           "smtpdm-eu-central-1.aliyuncs.com", 465, "implicit", "spf1.dm.aliyun.com"),
    Preset("gmail", "Gmail / Google Workspace", "smtp.gmail.com", 587, "starttls",
           "_spf.google.com"),
    Preset("outlook", "Outlook / Microsoft 365", "smtp.office365.com", 587, "starttls",
           "spf.protection.outlook.com"),
    Preset("sendgrid", "SendGrid", "smtp.sendgrid.net", 587, "starttls", "sendgrid.net"),
    Preset("mailgun", "Mailgun", "smtp.mailgun.org", 587, "starttls", "mailgun.org"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in _BASE} | {
    f"amazon-ses-{region}": Preset(
        f"amazon-ses-{region}", f"Amazon SES ({region})",
        f"email-smtp.{region}.amazonaws.com", 587, "starttls", "amazonses.com",
    )
    for region in AMAZON_SES_REGIONS
}
