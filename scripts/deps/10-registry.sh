# Registry test tools: Debian docker-registry, skopeo and htpasswd, and ferro-oci-server (OCI 1.1 referrers API).
apt_ensure docker-registry skopeo apache2-utils
need docker-registry "apt-get install docker-registry"
need skopeo "apt-get install skopeo"
need htpasswd "apt-get install apache2-utils"
if [ ! -x "$PROVGATE_CACHE/cargo/bin/ferro-oci-server" ]; then
  echo "scripts/test: installing ferro-oci-server 1.0.0 into $PROVGATE_CACHE/cargo" >&2
  cargo install ferro-oci-server --version 1.0.0 --locked --root "$PROVGATE_CACHE/cargo"
fi
PROVGATE_TEST_DOCKER_REGISTRY="$(command -v docker-registry)"
PROVGATE_TEST_SKOPEO="$(command -v skopeo)"
PROVGATE_TEST_HTPASSWD="$(command -v htpasswd)"
PROVGATE_TEST_FERRO="$PROVGATE_CACHE/cargo/bin/ferro-oci-server"
export PROVGATE_TEST_DOCKER_REGISTRY PROVGATE_TEST_SKOPEO PROVGATE_TEST_HTPASSWD PROVGATE_TEST_FERRO
