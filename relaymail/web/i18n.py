"""The console's two languages; the choice comes from ``?lang=``, then the ``lang`` cookie,
then Accept-Language (any zh* means Simplified Chinese)."""

from __future__ import annotations

from twisted.web.iweb import IRequest

LANGUAGES = ("en", "zh")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "relaymail console", "dashboard": "Dashboard", "relay": "Relay settings",
        "queue": "Queue", "failed": "Failed mail", "credentials": "Credentials",
        "logs": "Delivery log", "send": "Send mail", "logout": "Log out", "login": "Log in",
        "username": "Username", "password": "Password", "login_failed": "Login failed",
        "status": "Status", "queued": "Queued", "held": "Held", "failed_count": "Failed",
        "processed": "Processed", "success_rate": "Success rate", "disk": "Free disk (MB)",
        "per_hour": "Messages per hour (last 24 h)", "upstreams": "Upstreams",
        "up": "up", "down": "down", "preset": "Provider preset", "custom": "(custom)",
        "host": "Host", "port": "Port", "tls": "TLS", "enabled": "Relay through this provider",
        "test": "Test connection", "save": "Save", "saved": "Saved and applied",
        "step": "Step", "time_ms": "ms", "reply": "Reply", "test_ok": "Connection works",
        "password_keep": "(unchanged)", "sender": "Sender", "recipient": "Recipient",
        "state": "State", "size": "Size", "age": "Age (s)", "actions": "Actions",
        "retry": "Retry", "hold": "Hold", "release": "Release", "delete": "Delete",
        "bounce": "Bounce", "retry_all": "Retry all now", "retry_failed": "Retry all failed",
        "filter": "Filter", "search": "Search", "queue_id": "Queue ID", "time": "Time",
        "name": "Name", "hourly_quota": "Hourly quota", "daily_quota": "Daily quota",
        "sender_domains": "Allowed sender domains (comma separated)", "create": "Create",
        "reset_password": "Reset password", "password_once": "Password (shown only now)",
        "from": "From", "to": "To (comma separated)", "subject": "Subject", "text": "Text",
        "queued_as": "Queued as", "none": "Nothing here", "error": "Error",
        "language": "中文", "received": "received", "sent": "sent", "deferred": "deferred",
        "bounced": "bounced", "reason": "Reason", "confirm": "Are you sure?",
        "auth_method": "Login", "auth_password": "Username and password",
        "auth_oauth2": "OAuth2 (Microsoft, Google)", "client_id": "Client ID (application ID)",
        "tenant": "Tenant (Microsoft: directory ID or domain; empty: common)",
        "token_url": "Token URL (empty: from the preset)", "client_secret": "Client secret",
        "grant": "Grant", "grant_user": "A mailbox signs in once (refresh token)",
        "grant_app": "Application (client credentials, Microsoft 365)",
        "mechanism": "SASL mechanism",
        "tls_verified_only": "With a username, the password or token goes only to a server "
                             "whose certificate is checked: STARTTLS or implicit TLS.",
        "oauth2_hint": "The refresh token is not typed in here: after saving, run "
                       "`relaymail oauth2 authorize --config <file> --transport <name>` on the "
                       "relay host (add --device to sign in from another computer). The "
                       "client credentials grant needs no sign-in.",
    },
    "zh": {
        "title": "relaymail 控制台", "dashboard": "概览", "relay": "中继设置", "queue": "队列",
        "failed": "失败邮件", "credentials": "SMTP 凭据", "logs": "投递日志", "send": "发送邮件",
        "logout": "退出", "login": "登录", "username": "用户名", "password": "密码",
        "login_failed": "登录失败", "status": "状态", "queued": "排队中", "held": "已暂停",
        "failed_count": "失败", "processed": "已处理", "success_rate": "成功率",
        "disk": "剩余磁盘 (MB)", "per_hour": "每小时邮件数（最近 24 小时）",
        "upstreams": "上游服务器", "up": "正常", "down": "不可用", "preset": "服务商预设",
        "custom": "（自定义）", "host": "主机", "port": "端口", "tls": "TLS",
        "enabled": "通过此服务商中继", "test": "测试连接", "save": "保存",
        "saved": "已保存并生效", "step": "步骤", "time_ms": "毫秒", "reply": "服务器回复",
        "test_ok": "连接正常", "password_keep": "（不变）", "sender": "发件人",
        "recipient": "收件人", "state": "状态", "size": "大小", "age": "等待 (秒)",
        "actions": "操作", "retry": "重试", "hold": "暂停", "release": "恢复",
        "delete": "删除", "bounce": "退信", "retry_all": "立即全部重试",
        "retry_failed": "重试全部失败邮件", "filter": "筛选", "search": "搜索",
        "queue_id": "队列 ID", "time": "时间", "name": "名称", "hourly_quota": "每小时配额",
        "daily_quota": "每日配额", "sender_domains": "允许的发件域（逗号分隔）",
        "create": "创建", "reset_password": "重置密码", "password_once": "密码（仅显示这一次）",
        "from": "发件人", "to": "收件人（逗号分隔）", "subject": "主题", "text": "正文",
        "queued_as": "已排队，ID", "none": "暂无内容", "error": "错误", "language": "English",
        "received": "已接收", "sent": "已发送", "deferred": "延迟", "bounced": "已退信",
        "reason": "原因", "confirm": "确定吗？",
        "auth_method": "登录方式", "auth_password": "用户名和密码",
        "auth_oauth2": "OAuth2（微软、谷歌）", "client_id": "客户端 ID（应用程序 ID）",
        "tenant": "租户（微软：目录 ID 或域名；留空为 common）",
        "token_url": "令牌地址（留空则使用预设）", "client_secret": "客户端密钥",
        "grant": "授权方式", "grant_user": "邮箱用户登录一次（刷新令牌）",
        "grant_app": "应用程序（客户端凭据，Microsoft 365）", "mechanism": "SASL 机制",
        "tls_verified_only": "填写了用户名时，密码或令牌只发送给证书经过验证的服务器："
                             "STARTTLS 或隐式 TLS。",
        "oauth2_hint": "刷新令牌不在这里填写：保存后，在中继服务器上运行 "
                       "`relaymail oauth2 authorize --config <配置文件> --transport <名称>`"
                       "（加 --device 可在另一台电脑上登录）。客户端凭据授权无需登录。",
    },
}


def choose_language(request: IRequest) -> str:
    asked = (request.args.get(b"lang") or [b""])[0].decode("ascii", "replace")
    if asked in LANGUAGES:
        return asked
    cookie = (request.getCookie(b"lang") or b"").decode("ascii", "replace")
    if cookie in LANGUAGES:
        return cookie
    accepted = (request.getHeader(b"accept-language") or b"").decode("ascii", "replace")
    first = accepted.split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"
