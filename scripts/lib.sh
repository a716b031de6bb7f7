# shellcheck shell=bash
# lib.sh -- shell functions shared by the entry points in scripts/: where
# the repository is, which Debian packages are missing and how to install
# them, and a quiet incremental build.  Source it from bash; it defines
# functions and the variable LMP_ROOT, and changes nothing else.

LMP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

lmp_say() { printf '%s\n' "$*" >&2; }

# A progress header, on stdout so that it interleaves with the output of
# the steps it announces.
lmp_header() { printf '\n==> %s\n' "$*"; }

lmp_have() { command -v "$1" >/dev/null 2>&1; }

# True if the Debian package $1 is installed (not merely known or removed
# with its configuration left behind).
lmp_pkg_installed() {
  lmp_have dpkg-query || return 1
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' ok installed$'
}

# The major version of the installed clang, or Debian 12's default when
# clang is not there yet: the sanitizer runtimes are packaged per version.
lmp_clang_major() {
  local v
  if lmp_have clang && v=$(clang -dumpversion 2>/dev/null); then
    printf '%s\n' "${v%%.*}"
  else
    printf '14\n'
  fi
}

# lmp_missing_packages GROUP...: prints, one a line, the Debian packages
# that the groups need and that are missing.  Each thing is checked the way
# it is used: commands by name, libraries and Lua modules by package.
#   build  compile the tree: C toolchain, pkg-config, cmake, Lua and libuv
#   test   run the specs: lua5.4, busted and LuaFileSystem; luarocks for
#          the rockspec
#   fuzz   the libFuzzer target and clang's sanitizer runtimes
#   broker Redis (redis-server, redis-cli) and hiredis, for a Pool that
#          sends its tasks through a broker
#   bench  the Python twins of the benchmarks
lmp_missing_packages() {
  local group out=()
  for group in "$@"; do
    case $group in
      build)
        if ! lmp_have gcc || ! lmp_have make || ! lmp_pkg_installed libc6-dev
        then
          out+=(build-essential)
        fi
        lmp_have pkg-config || out+=(pkg-config)
        lmp_have cmake || out+=(cmake)
        lmp_pkg_installed liblua5.4-dev || out+=(liblua5.4-dev)
        lmp_pkg_installed libuv1-dev || out+=(libuv1-dev)
        ;;
      test)
        lmp_have lua5.4 || out+=(lua5.4)
        lmp_have busted || out+=(lua-busted)
        lmp_pkg_installed lua-filesystem || out+=(lua-filesystem)
        lmp_have luarocks || out+=(luarocks)
        ;;
      fuzz)
        lmp_have clang || out+=(clang)
        lmp_pkg_installed "libclang-rt-$(lmp_clang_major)-dev" ||
          out+=("libclang-rt-$(lmp_clang_major)-dev")
        ;;
      broker)
        lmp_have redis-server || out+=(redis-server)
        lmp_have redis-cli || out+=(redis-tools)
        lmp_pkg_installed libhiredis-dev || out+=(libhiredis-dev)
        ;;
      bench)
        lmp_have python3 || out+=(python3)
        ;;
      *)
        lmp_say "lib.sh: unknown package group '$group'"
        return 2
        ;;
    esac
  done
  [ ${#out[@]} -eq 0 ] || printf '%s\n' "${out[@]}" | awk '!seen[$0]++'
}

# lmp_ensure GROUP...: installs whatever lmp_missing_packages names, with
# apt-get (updating the package lists once, and only when something is
# missing), through sudo when not root.  Returns non-zero if it cannot.
lmp_ensure() {
  local groups=("$@") missing sudo=()
  missing=$(lmp_missing_packages "${groups[@]}") || return
  [ -n "$missing" ] || return 0
  # shellcheck disable=SC2086  # one package a word
  set -- $missing
  lmp_say "missing Debian packages: $*"
  if ! lmp_have apt-get; then
    lmp_say "cannot install them: apt-get not found (is this Debian?)"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! lmp_have sudo; then
      lmp_say "cannot install them: not root and no sudo; as root run:"
      lmp_say "  apt-get update && apt-get install -y $*"
      return 1
    fi
    sudo=(sudo)
  fi
  if [ -z "${LMP_APT_UPDATED:-}" ]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -q -o Dpkg::Use-Pty=0 update </dev/null || return
    LMP_APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -q -y -o Dpkg::Use-Pty=0 install --no-install-recommends "$@" \
    </dev/null || return
  hash -r
  missing=$(lmp_missing_packages "${groups[@]}")
  if [ -n "$missing" ]; then
    lmp_say "still missing after apt-get install: ${missing//$'\n'/ }"
    return 1
  fi
}

# lmp_build DIR [cmake -D options...]: configures DIR (only the first time,
# or when options are given) and builds it quietly, incrementally.  On
# failure prints the build's output and returns non-zero.
lmp_build() {
  local dir=$1 log
  shift
  log=$(mktemp) || return
  if [ ! -f "$dir/CMakeCache.txt" ] || [ $# -gt 0 ]; then
    if ! cmake -S "$LMP_ROOT" -B "$dir" "$@" >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
  fi
  if ! cmake --build "$dir" -j "$(nproc 2>/dev/null || echo 2)" \
       >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}
