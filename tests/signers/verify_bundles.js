// Second opinion from npm @sigstore/verify: prints one JSON line per bundle, {"file", "ok", "error"}.
// Usage: node verify_bundles.js TRUSTED_ROOT_JSON KEY_PEM BUNDLE...
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');

const [rootFile, keyFile, ...bundles] = process.argv.slice(2);
const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(rootFile, 'utf8')));
const spki = crypto.createPublicKey(fs.readFileSync(keyFile)).export({ format: 'der', type: 'spki' });
const keys = { 'provgate-test': { rawBytes: spki, keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start: new Date(0) } } };
const material = toTrustMaterial(root, keys);
for (const file of bundles) {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(file, 'utf8')));
  const keyless = bundle.verificationMaterial.content.$case !== 'publicKey';
  const options = keyless
    ? { tlogThreshold: 1, ctlogThreshold: 1, timestampThreshold: 1 }
    : { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 };
  try {
    new Verifier(material, options).verify(toSignedEntity(bundle));
    console.log(JSON.stringify({ file, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ file, ok: false, error: String(e && e.message || e) }));
  }
}
