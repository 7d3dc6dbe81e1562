# rc-instagram as a container (README "Docker, next to rocketchat-compose").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/rc-instagram
COPY pyproject.toml README.md constraints.txt ./
COPY bot ./bot
COPY commands ./commands
COPY storage ./storage
COPY sandbox ./sandbox
RUN pip install -c constraints.txt . && useradd --system --uid 10001 --home-dir /data rc-instagram \
    && mkdir -p /data /etc/rc-instagram && chown rc-instagram /data && chmod 700 /data

USER rc-instagram
VOLUME ["/data"]
EXPOSE 8080
# /healthz is 200 while the realtime connection and the store are up, 503 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["rc-instagram"]
CMD ["run", "--config", "/etc/rc-instagram/config.yaml"]
