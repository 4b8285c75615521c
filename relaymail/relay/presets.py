"""Provider presets: moved to :mod:`relaymail.config.presets` (the config package reads
them and must import nothing from the relay); re-exported here for existing importers."""

from relaymail.config.presets import (
    ALIYUN_NOTE,
    AMAZON_SES_REGIONS,
    AUTHORIZATION_CODE,
    GOOGLE,
    GOOGLE_NOTE,
    MICROSOFT,
    MICROSOFT_LOGIN,
    MICROSOFT_NOTE,
    MICROSOFT_PERSONAL,
    PRESETS,
    TENCENT_NOTE,
    OAuth2Defaults,
    Preset,
)

__all__ = [
    "ALIYUN_NOTE", "AMAZON_SES_REGIONS", "AUTHORIZATION_CODE", "GOOGLE", "GOOGLE_NOTE",
    "MICROSOFT", "MICROSOFT_LOGIN", "MICROSOFT_NOTE", "MICROSOFT_PERSONAL", "PRESETS",
    "TENCENT_NOTE", "OAuth2Defaults", "Preset",
]
