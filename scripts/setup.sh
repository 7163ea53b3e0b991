#!/usr/bin/env bash
# Installs what Veritee needs on a fresh Debian/Ubuntu machine, idempotently:
#   - clang, lld, wasi-libc and the wasm32 compiler runtime (to build C modules to Wasm)
#   - Debian's rustc with its wasm32-wasi standard library, and cargo (to build Rust modules)
#   - the TPM 2.0 software stack (libtss2, which tpm2-pytss builds against and loads), and
#     pkg-config (its build finds libtss2 with it)
#   - a virtual environment in .venv with Veritee and its Python dependencies
#   - with --test, also what only the test suite uses (a PostgreSQL server for the store tests,
#     swtpm for the TPM backend's tests, tpm2-tools to inspect a TPM by hand while debugging,
#     chromium and its driver for the dashboard's browser test)
# Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=0
case "${1:-}" in
  "") ;;
  --test) for_tests=1 ;;
  *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
command -v wasm-ld >/dev/null 2>&1 || need_apt+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need_apt+=(wasi-libc)
ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 \
  || need_apt+=(libclang-rt-14-dev-wasm32)
# Debian's rustc, not rustup's: `veritee build` looks for /usr/bin/rustc first, and it needs
# the wasm32-wasi std next to it (rustup's default toolchain has only the host's).
[ -x /usr/bin/rustc ] || need_apt+=(rustc)
ls -d /usr/lib/rustlib/wasm32-wasi/lib >/dev/null 2>&1 || need_apt+=(libstd-rust-dev-wasm32)
[ -x /usr/bin/cargo ] || need_apt+=(cargo)
# The TPM 2.0 backend (tee/backends/tpm.py) talks to the TPM through tpm2-pytss, a binding of
# the TSS libraries: its wheel is built against libtss2-dev's headers, found by pkg-config.
pkg-config --exists tss2-esys 2>/dev/null || need_apt+=(libtss2-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ "$for_tests" -eq 1 ]; then
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)  # store tests
  # The TPM tests start their own software TPMs (swtpm, with swtpm_setup from swtpm-tools
  # to give each an EK certificate); tpm2-tools only for inspecting one by hand.
  command -v swtpm >/dev/null 2>&1 || need_apt+=(swtpm)
  command -v swtpm_setup >/dev/null 2>&1 || need_apt+=(swtpm-tools)
  command -v tpm2_pcrread >/dev/null 2>&1 || need_apt+=(tpm2-tools)
  # The dashboard's test opens its page in a real headless browser, driven by Selenium.
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  [ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
  # The NATS transport's tests start their own brokers (JetStream, file storage).
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
fi

if [ "$for_tests" -eq 1 ]; then
  # RA-TLS's challenge travels in the TLS server name: a test routes it through a real SNI
  # router, HAProxy.
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11 or newer is required (found $("$PY" --version))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.veritee-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python dependencies into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[services,dev]'
  touch "$stamp"
fi
