"""Signs an image digest the way cosign and Tekton Chains do, with PyPI `cryptography` and `securesystemslib`
(tools provgate did not write), for the end-to-end tests.

Usage: e2e_sign.py KEYDIR KEYNAME DIGEST_HEX[,DIGEST_HEX...] STATEMENT_JSON OUT_JSON [PAYLOAD_TYPE [DOCKER_REFERENCE]]

Creates KEYDIR/KEYNAME.key (ECDSA P-256) and KEYDIR/KEYNAME.pub on first use. Writes OUT_JSON with the exact
simple-signing payload (base64) for the first digest, its signature (base64) and a DSSE envelope of STATEMENT_JSON
whose subjects are replaced by the digests given (several: one subject each, as Chains names every output), signed
over PAE as Chains does. The payload names DOCKER_REFERENCE (default index.docker.io/acme/app) and is written as
cosign writes it: compact JSON, `optional` null.
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

keydir, name, digests, statement_path, out_path = sys.argv[1:6]
subjects_hex = digests.split(",")
digest_hex = subjects_hex[0]
payload_type = sys.argv[6] if len(sys.argv) > 6 else "application/vnd.in-toto+json"
docker_reference = sys.argv[7] if len(sys.argv) > 7 else "index.docker.io/acme/app"
os.makedirs(keydir, exist_ok=True)
key_path = os.path.join(keydir, name + ".key")
if os.path.exists(key_path):
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
else:
    key = ec.generate_private_key(ec.SECP256R1())
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(os.path.join(keydir, name + ".pub"), "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

# cosign's simple signing payload: docker-reference in go-containerregistry form, no tag; Go's compact JSON.
payload = json.dumps({
    "critical": {
        "identity": {"docker-reference": docker_reference},
        "image": {"docker-manifest-digest": "sha256:" + digest_hex},
        "type": "cosign container image signature",
    },
    "optional": None,
}, separators=(",", ":")).encode()
signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))

with open(statement_path) as f:
    statement = json.load(f)
statement["subject"] = [{"name": "index.docker.io/acme/app", "digest": {"sha256": h}} for h in subjects_hex]
public = SSlibKey.from_crypto(key.public_key(), scheme="ecdsa-sha2-nistp256")
envelope = Envelope(payload=json.dumps(statement).encode(), payload_type=payload_type, signatures={})
envelope.sign(CryptoSigner(key, public))

with open(out_path, "w") as f:
    json.dump({
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(signature).decode(),
        "envelope": envelope.to_dict(),
    }, f)
