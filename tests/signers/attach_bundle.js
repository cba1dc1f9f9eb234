// Attaches Sigstore bundles to an image as OCI 1.1 referrers with npm @sigstore/oci attachArtifactToImage (the
// library behind `sigstore attach`, called without credentials: the test registries are anonymous). The library
// uses the referrers API when the registry answers it, else it maintains the `sha256-<hex>` tag-schema index.
// Usage: node attach_bundle.js HOST:PORT/REPO IMAGE_DIGEST BUNDLE_FILE... ; prints one descriptor (JSON) a line.
'use strict';
const fs = require('node:fs');
const { attachArtifactToImage } = require('@sigstore/oci');

const [imageName, imageDigest, ...files] = process.argv.slice(2);
if (!imageName || !imageDigest || files.length === 0) {
  console.error('usage: node attach_bundle.js HOST:PORT/REPO IMAGE_DIGEST BUNDLE_FILE...');
  process.exit(2);
}

async function attach(file) {
  const artifact = fs.readFileSync(file);
  const bundle = JSON.parse(artifact);
  const statement = JSON.parse(Buffer.from(bundle.dsseEnvelope.payload, 'base64'));
  // The annotations cosign v3 writes (FORMATS.md §1.8).
  const annotations = {
    'dev.sigstore.bundle.content': 'dsse-envelope',
    'dev.sigstore.bundle.predicateType': statement.predicateType,
  };
  const descriptor = await attachArtifactToImage({
    imageName,
    imageDigest,
    artifact,
    mediaType: bundle.mediaType,
    annotations,
    credentials: undefined,
  });
  console.log(JSON.stringify(descriptor));
}

(async () => {
  for (const file of files) {
    await attach(file);
  }
})().catch((e) => {
  console.error(e, e.cause);
  process.exit(1);
});
