# Token broker image: slim Python 3.11, runs as a non-root user, holds no key material.
# Signing keys live on a volume mounted at /srv/keys (shared by every replica); see compose.yaml
# and docs/operations.md. Build: docker build -t token-broker .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BROKER_KEYS_DIR=/srv/keys

RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /srv --no-create-home --shell /usr/sbin/nologin broker \
 && mkdir -p /srv/app /srv/keys \
 && chown broker:broker /srv/keys \
 && chmod 0700 /srv/keys

WORKDIR /srv/app
COPY pyproject.toml README.md ./
# The distributions the server depends on (pyproject.toml pins them, same version), installed from
# this checkout in the same pip command so pip never looks for them on a package index; no extras
# (not the client's [redis], not the test dependencies).
COPY packages/jose ./packages/jose
COPY packages/client ./packages/client
COPY packages/resource ./packages/resource
COPY app ./app
# The rotation script, run with `docker compose run --rm keys-init python scripts/rotate_signing_key.py`.
COPY scripts/rotate_signing_key.py scripts/demo.py ./scripts/
RUN pip install ./packages/jose ./packages/client ./packages/resource . && rm -rf /root/.cache

USER broker:broker
# The public listener. The management listener (/metrics, /healthz, /readyz) stays on the
# container's loopback (BROKER_MANAGEMENT_HOST=127.0.0.1, port 8002) unless the deployment opens
# it to a private network, as compose.yaml does; it is not exposed here.
EXPOSE 8000
# /healthz on the management listener: the process answers. Compose overrides this with /readyz
# (Redis and keys ready).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('BROKER_MANAGEMENT_PORT') or '8002'), timeout=2).status != 200)"]
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]
