# A real Kubernetes API server for tests/kube_e2e.rs: Debian etcd-server, and kube-apiserver built ONCE from
# Debian's `kubernetes` source package (1.20, vendored, offline with Debian's Go) and cached under
# $PROVGATE_CACHE/kube/bin (scratch tree in $PROVGATE_CACHE/kube/src, removed after; nothing lands in the repo).
# Later runs only check that the cached binary runs `--version` and was built by this recipe (the stamp).
apt_ensure etcd-server
need etcd "apt-get install etcd-server"
kube_dir="$PROVGATE_CACHE/kube"
kube_apiserver="$kube_dir/bin/kube-apiserver"
# Bump when the recipe changes, so a cached binary from an older recipe is rebuilt.
kube_recipe="2: vendored modern-go/reflect2 replaced by Debian's 1.0.2"
if ! "$kube_apiserver" --version >/dev/null 2>&1 || [ "$(cat "$kube_dir/bin/recipe" 2>/dev/null)" != "$kube_recipe" ]; then
  echo "scripts/test: building kube-apiserver from Debian's kubernetes source package into $kube_dir (once, 5-10 min)" >&2
  # Source packages need a deb-src entry. The package is bookworm's (1.20.5+really1.20.2, vendored) and builds
  # with bookworm's Go 1.19; add the entry (deb822) unless apt already knows the source package.
  if ! apt-cache showsrc kubernetes >/dev/null 2>&1; then
    src_list=/etc/apt/sources.list.d/provgate-deb-src.sources
    echo "scripts/test: adding a deb-src entry for bookworm main ($src_list)" >&2
    printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm' 'Components: main' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | as_root tee "$src_list" >/dev/null
    as_root apt-get update -qq
  fi
  # The vendored modern-go/reflect2 1.0.1 faults under Go >= 1.18 when the apiserver iterates a map through it
  # (it does so to record a mutating webhook's JSON patch: "fatal error: fault" in UnsafeMapType.UnsafeIterate,
  # modern-go/reflect2#26). Debian packages the fixed 1.0.2; it replaces the vendored copy below.
  apt_ensure golang-go dpkg-dev rsync make golang-github-modern-go-reflect2-dev
  reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$reflect2_src/reflect2.go" ] || { echo "scripts/test: $reflect2_src is missing: apt-get install golang-github-modern-go-reflect2-dev" >&2; exit 1; }
  need go "apt-get install golang-go"
  rm -rf "$kube_dir/src"
  mkdir -p "$kube_dir/src" "$kube_dir/bin"
  (cd "$kube_dir/src" && apt-get source --download-only -qq kubernetes && dpkg-source -x ./*.dsc tree >/dev/null) || {
    echo "scripts/test: 'apt-get source kubernetes' failed: a deb-src line for Debian bookworm main is needed" >&2
    exit 1
  }
  (
    cd "$kube_dir/src/tree"
    # Only the sources change; the module metadata keeps naming 1.0.1, which -mod=vendor does not check.
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r "$reflect2_src" vendor/github.com/modern-go/reflect2
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    cd .go/src/k8s.io/kubernetes
    # No git metadata in a source package: give the version script the package version.
    export KUBE_GIT_VERSION="v$(dpkg-parsechangelog -S Version | sed -E 's/^.*really//; s/-[^-]*$//')" KUBE_GIT_TREE_STATE=clean
    GOPATH="$kube_dir/src/tree/.go" GOCACHE="$kube_dir/src/gocache" CGO_ENABLED=0 GOFLAGS=-mod=vendor \
      make WHAT=cmd/kube-apiserver >&2
  ) || { echo "scripts/test: building kube-apiserver failed (see above)" >&2; exit 1; }
  install -m 0755 "$kube_dir/src/tree/_output/bin/kube-apiserver" "$kube_apiserver"
  printf '%s\n' "$kube_recipe" > "$kube_dir/bin/recipe"
  rm -rf "$kube_dir/src"
  "$kube_apiserver" --version >&2
fi
PROVGATE_TEST_KUBE_APISERVER="$kube_apiserver"
PROVGATE_TEST_ETCD="$(command -v etcd)"
export PROVGATE_TEST_KUBE_APISERVER PROVGATE_TEST_ETCD
