#!/bin/sh
# Can `make` build .venv? Prints one line saying what to install, or nothing when all is well.
#
#   sh tools/check_python.sh [--fail] PYTHON INSTALLER GOAL
#
# PYTHON     the interpreter .venv would be made with (`PYTHON=python3.12 make repro`)
# INSTALLER  `uv` or `pip`: which one the Makefile will use
# GOAL       the make goal to name in the advice (repro, test, ...)
#
# When .venv/bin/python runs, .venv is kept, so that interpreter is checked instead of PYTHON.
# Without --fail the line goes to stdout and the status is 0: the Makefile reads it with
# $(shell ...) and stops with $(error ...), which prints that one line and nothing else. With
# --fail (after `uv venv` resolved a version request) it goes to stderr and the status is 1.
#
# POSIX sh, not Python: it must answer for a missing interpreter, and for a Python 2.
# The bounds are pyproject.toml's requires-python, ">=3.11.4,<3.13" (3.11.4 brought tarfile's
# data extraction filter); tests/code/test_makefile.py checks that the two agree.

fail=false
if [ "$1" = "--fail" ]; then
    fail=true
    shift
fi
python=${1:-python3}
installer=${2:-pip}
goal=${3:-repro}
venv_python=.venv/bin/python

needs="this project needs Python 3.11 (3.11.4 or later) or 3.12"
if [ "$installer" = uv ]; then
    get="run \`PYTHON=3.12 make $goal\` (uv fetches Python 3.12)"
else
    get="install python3.12 (Debian/Ubuntu: apt-get install python3.12 python3.12-venv; or install uv, https://docs.astral.sh/uv/, which fetches it) and run \`PYTHON=python3.12 make $goal\`"
fi

say() {
    if [ "$fail" = true ]; then
        echo "make: $1" >&2
        exit 1
    fi
    echo "$1"
    exit 0
}

# "3.11.7", or nothing when $1 does not run as a Python.
version_of() {
    "$1" -c 'import sys; print("%d.%d.%d" % tuple(sys.version_info[:3]))' 2>/dev/null
}

# Status 0 when "$1" (major.minor.micro) satisfies >=3.11.4,<3.13.
supported() {
    old_ifs=$IFS
    IFS=.
    # shellcheck disable=SC2086 # split on the dots on purpose
    set -- $1
    IFS=$old_ifs
    case "$1$2$3" in
        "" | *[!0-9]*) return 1 ;;
    esac
    [ "$1" -eq 3 ] || return 1
    [ "$2" -eq 12 ] && return 0
    [ "$2" -eq 11 ] && [ "$3" -ge 4 ]
}

# An existing, working .venv is reused: its interpreter is the one that matters.
if [ -x "$venv_python" ] && version=$(version_of "$venv_python") && [ -n "$version" ]; then
    supported "$version" && exit 0
    say ".venv has Python $version; $needs: remove it (rm -rf .venv) and $get"
fi

if ! command -v "$python" >/dev/null 2>&1; then
    # uv also takes version requests (3.12) and finds or fetches the interpreter itself;
    # the Makefile checks .venv/bin/python once uv has made it.
    [ "$installer" = uv ] && exit 0
    say "$python not found; $needs: $get"
fi
version=$(version_of "$python")
if [ -z "$version" ]; then
    say "$python does not run as a Python; $needs: $get"
fi
if ! supported "$version"; then
    say "$python is $version; $needs: $get"
fi
# `python -m venv` needs the venv module and ensurepip (Debian ships both in python3.X-venv);
# uv needs neither.
if [ "$installer" != uv ] && ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    minor=${version%.*}
    say "$python ($version) has no venv module with ensurepip: install it (Debian/Ubuntu: apt-get install python$minor-venv) and run \`make $goal\` again, or install uv (https://docs.astral.sh/uv/), which needs neither"
fi
exit 0
