# Helpers shared by the dependency scripts (sourced by scripts/test).
need() { # need CMD "how to install" -> fails loudly when CMD is missing
  command -v "$1" >/dev/null 2>&1 || { echo "scripts/test: '$1' is required: $2" >&2; exit 1; }
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else need sudo "run as root or install sudo"; sudo "$@"; fi; }
apt_ensure() { # apt_ensure PKG... installs Debian packages that are not installed yet
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test: installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
need cargo "install Rust with rustup (https://rustup.rs)"
need openssl "apt-get install openssl"
