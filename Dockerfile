# relaymail in a container: docker build -t relaymail . (or podman build); see docs/deployment.md.
FROM python:3.11-slim-bookworm

RUN useradd --system --uid 10025 --home-dir /var/lib/relaymail relaymail \
    && mkdir -p /var/lib/relaymail /etc/relaymail \
    && chown relaymail: /var/lib/relaymail

WORKDIR /opt/relaymail
COPY setup.py pyproject.toml README.md constraints.txt ./
COPY relaymail ./relaymail
COPY twisted ./twisted
# Install, then let twistd write its plugin cache now, while site-packages is writable.
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

COPY etc/container.json /etc/relaymail/relay.json

USER relaymail
# Spool, outbox, TLS pair, credentials and delivery history: keep them on a volume.
VOLUME /var/lib/relaymail
EXPOSE 2525 2587 2465 8025
# /health is open to loopback without a login (web.open_metrics_to_loopback).
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/health', timeout=4)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "relaymail", "--config", "/etc/relaymail/relay.json"]
