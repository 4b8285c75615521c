"""twistd plugin: ``twistd -n relaymail --config etc/relay.json``."""

from twisted.application.service import ServiceMaker

relaymail = ServiceMaker(
    "relaymail", "relaymail.tap", "Store-and-forward SMTP relay (smart host)", "relaymail"
)
