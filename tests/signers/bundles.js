// Builds Sigstore bundles (v0.3) with npm @sigstore/sign, keys made now by node:crypto: key-signed (publicKey
// hint, no tlog) and keyless (certificate from an in-process @sigstore/mock Fulcio CA, Rekor entry from the mock
// Rekor). Writes the matching trusted_root.json. Usage: node bundles.js OUTDIR IMAGE_DIGEST_HEX
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { DSSEBundleBuilder, RekorWitness } = require('@sigstore/sign');
const { bundleToJSON } = require('@sigstore/bundle');
const mock = require('@sigstore/mock');
const nock = require('nock');

const [out, digestHex] = process.argv.slice(2);
fs.mkdirSync(out, { recursive: true });
const write = (name, data) => fs.writeFileSync(path.join(out, name), typeof data === 'string' ? data : JSON.stringify(data));

const statement = (predicateType, predicate) =>
  Buffer.from(JSON.stringify({
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{ name: 'index.docker.io/acme/app', digest: { sha256: digestHex } }],
    predicateType,
    predicate,
  }));
const SIGN = statement('https://sigstore.dev/cosign/sign/v1', {});
const PROVENANCE = statement('https://slsa.dev/provenance/v1', { runDetails: { builder: { id: 'https://tekton.dev/chains/v2' } } });
const TYPE = 'application/vnd.in-toto+json';

async function keySigned() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pem = publicKey.export({ format: 'pem', type: 'spki' });
  const signer = {
    sign: async (data) => ({ signature: crypto.sign('sha256', data, privateKey), key: { $case: 'publicKey', publicKey: pem, hint: 'provgate-test' } }),
  };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
  write('key.pub.pem', pem);
  write('key-signature.bundle.json', bundleToJSON(await builder.create({ data: SIGN, type: TYPE })));
  write('key-attestation.bundle.json', bundleToJSON(await builder.create({ data: PROVENANCE, type: TYPE })));
}

async function trustedRoot(ca, ctlog, tlog) {
  const keyId = crypto.createHash('sha256').update(tlog.publicKey).digest('base64');
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [{ baseUrl: 'https://rekor.provgate.test', hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: Buffer.from(tlog.publicKey).toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start: '2020-01-01T00:00:00Z' } },
      logId: { keyId } }],
    certificateAuthorities: [{ subject: { organization: 'mock', commonName: 'mock' }, uri: 'https://fulcio.provgate.test',
      certChain: { certificates: [{ rawBytes: Buffer.from(ca.rootCertificate).toString('base64') }] },
      validFor: { start: '2020-01-01T00:00:00Z' } }],
    ctlogs: [{ baseUrl: 'https://ctfe.provgate.test', hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: Buffer.from(ctlog.publicKey).toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start: '2020-01-01T00:00:00Z' } },
      logId: { keyId: Buffer.from(ctlog.logID).toString('base64') } }],
    timestampAuthorities: [],
  };
}

async function keyless() {
  const keyPair = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ctlog = await mock.initializeCTLog(keyPair());
  const ca = await mock.initializeCA(keyPair(), ctlog);
  const rekorURL = 'https://rekor.provgate.test';
  const tlog = await mock.initializeTLog(rekorURL, keyPair());
  const handler = mock.rekorHandler(tlog);
  nock(rekorURL).persist().post(handler.path).reply(async (_, body) => {
    const r = await handler.fn(typeof body === 'string' ? body : JSON.stringify(body));
    return [r.statusCode, r.response, { 'Content-Type': r.contentType || 'application/json' }];
  });
  const { publicKey, privateKey } = keyPair();
  const certDer = await ca.issueCertificate({
    publicKey: publicKey.export({ format: 'der', type: 'spki' }),
    subjectAltName: 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main',
    extensions: [{ oid: '1.3.6.1.4.1.57264.1.8', value: 'https://token.actions.githubusercontent.com' }],
  });
  const certificate = new crypto.X509Certificate(Buffer.from(certDer)).toString();
  const signer = { sign: async (data) => ({ signature: crypto.sign('sha256', data, privateKey), key: { $case: 'x509Certificate', certificate } }) };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [new RekorWitness({ rekorBaseURL: rekorURL, entryType: 'intoto' })] });
  write('keyless-signature.bundle.json', bundleToJSON(await builder.create({ data: SIGN, type: TYPE })));
  write('keyless-attestation.bundle.json', bundleToJSON(await builder.create({ data: PROVENANCE, type: TYPE })));
  write('keyless.trusted_root.json', await trustedRoot(ca, ctlog, tlog));
  // The same kind of root with another CA: certificates above must not chain to it.
  const otherCtlog = await mock.initializeCTLog(keyPair());
  const other = await mock.initializeCA(keyPair(), otherCtlog);
  write('other.trusted_root.json', await trustedRoot(other, otherCtlog, tlog));
}

keySigned().then(keyless).then(() => console.log('bundles written'), (e) => { console.error(e); process.exit(1); });
