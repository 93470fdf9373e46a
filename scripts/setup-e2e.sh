#!/usr/bin/env bash
# Set-up for the end-to-end tests (idempotent; setup.sh calls it): what JupyterLab in a
# real browser, Enterprise Gateway and JupyterHub need besides the `e2e` extra. A piece
# that cannot be installed is reported here and its tests skip, naming what is missing.
#   .venv-gateway/   Jupyter Enterprise Gateway in its own environment: EG 3.3 needs
#                    jupyter_client < 7 and jupyter_server < 2 (this package needs 8 and 2).
#   /usr/bin/chromium  Debian's Chromium for Playwright (never `playwright install`), as root.
#   .e2e/node/       configurable-http-proxy (JupyterHub's proxy) from npm.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EG_VERSION=3.3.0
CHP_VERSION=5.3.0

if [ ! -x .venv-gateway/bin/jupyter-enterprisegateway ]; then
    { "$PYTHON" -m venv .venv-gateway \
      && .venv-gateway/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1; \
      .venv-gateway/bin/python -m pip install -q "jupyter_enterprise_gateway==$EG_VERSION" 2>&1 | grep -v -e 'is ignored' -e '^$'; } \
      || true
    [ -x .venv-gateway/bin/jupyter-enterprisegateway ] \
      || echo "setup-e2e: Enterprise Gateway $EG_VERSION could not be installed into .venv-gateway; its tests will skip" >&2
fi

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get install -y -q chromium >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
          || echo "setup-e2e: apt-get install chromium failed; the browser test will skip" >&2
    else
        echo "setup-e2e: /usr/bin/chromium is missing (as root: apt-get install chromium); the browser test will skip" >&2
    fi
fi

if [ ! -x .e2e/node/node_modules/.bin/configurable-http-proxy ]; then
    if command -v npm >/dev/null; then
        npm install --prefix .e2e/node --no-audit --no-fund --loglevel=error \
            "configurable-http-proxy@$CHP_VERSION" >/dev/null 2>&1 \
          || echo "setup-e2e: npm install configurable-http-proxy failed; the JupyterHub test will skip" >&2
    else
        echo "setup-e2e: npm is missing (configurable-http-proxy for JupyterHub); the JupyterHub test will skip" >&2
    fi
fi
exit 0
