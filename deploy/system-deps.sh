#!/usr/bin/env bash
# Installs the Debian packages Lianfang needs when they are missing: libsodium (the ristretto255 group of
# the oblivious pseudonyms, loaded by pysodium at run time), jemalloc (the allocator the launchers preload
# into the services) and, unless called with "runtime", what the tests need: prometheus (promtool and
# the server for the e2e test), chromium + chromium-driver (the console's browser tests) and, for the
# fault tests and the soak, iproute2 (ip, tc) and nftables (nft: the lossy link).
# Services are not started by the install (policy-rc.d), since tests start their own on loopback.
set -euo pipefail

missing=()
# pysodium finds the library through ldconfig's cache, so the runtime package (no -dev) is enough.
{ command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libsodium\.so'; } || missing+=(libsodium23)
# jemalloc: the allocator the launchers preload into the services (services/kernel/allocator.py).
{ command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2'; } || missing+=(libjemalloc2)
if [ "${1:-}" != runtime ]; then
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fc-list 2>/dev/null | grep -qiE "wqy|noto sans cjk" || missing+=(fonts-wqy-zenhei)  # Chinese glyphs in screenshots
{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; } || missing+=(iproute2)  # hosts in network namespaces
command -v nft >/dev/null 2>&1 || missing+=(nftables)  # the fault catalogue's lossy link
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "  fix: sudo apt-get install ${missing[*]}  (Debian/Ubuntu), then run make again" >&2
  exit 1
fi

echo "installing ${missing[*]} (Debian packages, once) ..." >&2
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/lianfang-apt.log 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/lianfang-apt.log 2>&1 || {
    echo "error: apt-get could not install ${missing[*]}; see /tmp/lianfang-apt.log" >&2
    exit 1
  }
fi
# Some packages start their service anyway where no init system honours policy-rc.d.
pkill -x -u prometheus prometheus 2>/dev/null || true  # the packaged service's user only
