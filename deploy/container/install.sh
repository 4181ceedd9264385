#!/bin/sh
# Install s3proxy from a source tree into its own virtual environment.
#
# This is the container image's only install step (deploy/container/Containerfile) and CI runs it too
# (tests/test_deploy.py), so the image build is tested without a container engine. POSIX sh: the
# python:3.12-slim base has dash as /bin/sh.
#
#   install.sh [--prefix DIR] [--src DIR] [--python PY] [--create-user NAME] [--uid N] [-- PIP_ARGS...]
#
#   --prefix DIR        the virtual environment to create or reuse (default /opt/s3proxy)
#   --src DIR           the s3proxy source tree (default: the tree this script is in)
#   --python PY         the interpreter that makes the venv (default python3; needs >= 3.12)
#   --create-user NAME  also create the system user NAME (uid --uid, default 10001) and the directories
#                       /etc/s3proxy (config, read-only to it) and /var/lib/s3proxy/ca (its CA); only as root
#   -- PIP_ARGS...      extra arguments for `pip install` (CI: --no-deps --no-build-isolation --no-index)
set -eu

prefix=/opt/s3proxy
src=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
python=${PYTHON:-python3}
user=""
uid=10001
config_dir=/etc/s3proxy
state_dir=/var/lib/s3proxy

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix=$2; shift 2 ;;
    --src) [ $# -ge 2 ] || die "--src needs a value"; src=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs a value"; python=$2; shift 2 ;;
    --create-user) [ $# -ge 2 ] || die "--create-user needs a value"; user=$2; shift 2 ;;
    --uid) [ $# -ge 2 ] || die "--uid needs a value"; uid=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[ -f "$src/pyproject.toml" ] || die "$src is not the s3proxy source tree (no pyproject.toml)"

# 1. The virtual environment (reused when it exists, so CI can prepare one without network access).
if [ ! -x "$prefix/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' \
    || die "$python is older than Python 3.12 (mitmproxy 12 needs 3.12)"
  "$python" -m venv "$prefix"
fi

# 2. s3proxy and its dependencies. pip byte-compiles what it installs, so a read-only root filesystem
#    never needs to write __pycache__ at run time.
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
  "$prefix/bin/python" -m pip install --no-cache-dir --quiet "$@" "$src"

# 3. It runs.
"$prefix/bin/s3proxy" --version

# 4. The service user and its directories (the container image; a package would do this in its scripts).
if [ -n "$user" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: not root: not creating user $user or $config_dir, $state_dir" >&2
  else
    if ! id "$user" >/dev/null 2>&1; then
      if command -v useradd >/dev/null 2>&1; then
        useradd --system --uid "$uid" --user-group --home-dir "$state_dir" --no-create-home \
          --shell /usr/sbin/nologin "$user"
      elif command -v adduser >/dev/null 2>&1; then  # busybox / Alpine
        addgroup -S -g "$uid" "$user" && adduser -S -D -H -u "$uid" -G "$user" -h "$state_dir" -s /sbin/nologin "$user"
      else
        die "neither useradd nor adduser found: cannot create user $user"
      fi
    fi
    # Config is read-only to the service; only the CA directory is its own (key 0600 inside).
    install -d -m 0755 "$config_dir"
    install -d -m 0755 -o "$user" -g "$user" "$state_dir"
    install -d -m 0700 -o "$user" -g "$user" "$state_dir/ca"
  fi
fi
