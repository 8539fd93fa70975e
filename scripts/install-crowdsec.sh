#!/usr/bin/env bash
# Installs Debian's crowdsec (its LAPI and cscli), which the tests of `[crowdsec]` start on
# free loopback ports with configs of their own. Idempotent.
#
# The package's postinst registers to CrowdSec's central API when
# /etc/crowdsec/online_api_credentials.yaml is missing or empty; with no network that fails
# and leaves the package half-configured. A non-empty file made beforehand skips it (the
# postinst's own documented way to opt out).
set -euo pipefail

if command -v crowdsec >/dev/null 2>&1 && command -v cscli >/dev/null 2>&1 \
    && dpkg -s crowdsec 2>/dev/null | grep -q '^Status: install ok installed'; then
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
"${sudo[@]}" mkdir -p /etc/crowdsec
if [ ! -s /etc/crowdsec/online_api_credentials.yaml ]; then
    echo '# CAPI registration off: no network to the central API' \
        | "${sudo[@]}" tee /etc/crowdsec/online_api_credentials.yaml >/dev/null
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# A previous attempt that failed in its postinst is finished by the configure below.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends crowdsec >/dev/null
