# Signing tools we did not write, for tests/verify_signers.rs and tests/e2e_bundles.rs: PyPI cryptography + securesystemslib in a venv,
# npm @sigstore/{sign,oci,mock,verify}. Cached under $PROVGATE_CACHE; exports PROVGATE_TEST_PYTHON and
# PROVGATE_TEST_NODE_MODULES.
need python3 "apt-get install python3 python3-venv"
need node "apt-get install nodejs npm"
need npm "apt-get install npm"
signers_venv="$PROVGATE_CACHE/venv"
if ! "$signers_venv/bin/python" -c 'import cryptography, securesystemslib.dsse, securesystemslib.signer' 2>/dev/null; then
  echo "scripts/test: creating $signers_venv with cryptography and securesystemslib" >&2
  python3 -m venv "$signers_venv" || { echo "scripts/test: python3 -m venv failed: apt-get install python3-venv" >&2; exit 1; }
  "$signers_venv/bin/pip" install -q --disable-pip-version-check 'cryptography>=42' 'securesystemslib[crypto]>=1.0' >&2
fi
export PROVGATE_TEST_PYTHON="$signers_venv/bin/python"
signers_npm="$PROVGATE_CACHE/npm"
if [ ! -d "$signers_npm/node_modules/@sigstore/sign" ] || [ ! -d "$signers_npm/node_modules/@sigstore/verify" ] \
  || [ ! -d "$signers_npm/node_modules/@sigstore/mock" ] || [ ! -d "$signers_npm/node_modules/@sigstore/oci" ] \
  || [ ! -d "$signers_npm/node_modules/promise-retry" ]; then
  # @sigstore/oci 0.6.0 requires promise-retry without declaring it (make-fetch-happen >= 15.0.4 no longer brings
  # it): install it explicitly, or attachArtifactToImage fails with "Cannot find module 'promise-retry'".
  echo "scripts/test: installing npm @sigstore/sign @sigstore/oci @sigstore/mock @sigstore/verify promise-retry into $signers_npm" >&2
  mkdir -p "$signers_npm"
  [ -f "$signers_npm/package.json" ] || echo '{"name":"provgate-test-signers","private":true}' >"$signers_npm/package.json"
  npm install --prefix "$signers_npm" --no-audit --no-fund --silent @sigstore/sign @sigstore/oci @sigstore/mock @sigstore/verify promise-retry >&2
fi
export PROVGATE_TEST_NODE_MODULES="$signers_npm/node_modules"
