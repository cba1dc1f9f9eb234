"""Signs cosign simple-signing payloads and DSSE in-toto envelopes with keys made now, using PyPI `cryptography`
and `securesystemslib` (tools provgate did not write). Usage: sign_keys.py OUTDIR IMAGE_DIGEST_HEX.

For each key kind it writes KIND.pub.pem, KIND.payload.json (exact bytes signed), KIND.sig.b64 and KIND.att.json.
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

out, digest_hex = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)

payload = json.dumps(
    {
        "critical": {
            "identity": {"docker-reference": "index.docker.io/acme/app"},
            "image": {"docker-manifest-digest": "sha256:" + digest_hex},
            "type": "cosign container image signature",
        },
        "optional": {"signer": "python-cryptography"},
    },
    separators=(",", ":"),
).encode()

statement = json.dumps(
    {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": "index.docker.io/acme/other", "digest": {"sha256": "00" * 32}},
            {"name": "index.docker.io/acme/app", "digest": {"sha256": digest_hex}},
        ],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"runDetails": {"builder": {"id": "https://tekton.dev/chains/v2"}}},
    }
).encode()

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(ptype: str, body: bytes) -> bytes:
    t = ptype.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def raw_sign(kind, key, data):
    if kind == "p256":
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if kind == "p384-sha384":
        return key.sign(data, ec.ECDSA(hashes.SHA384()))
    if kind == "p384-sha256":
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if kind == "rsa-pkcs1":
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if kind == "rsa-pss":
        return key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    if kind == "rsa-pss-max":  # Go's rsa.SignPSS with PSSSaltLengthAuto, as cosign signs PSS
        return key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256())
    if kind == "ed25519":
        return key.sign(data)
    raise ValueError(kind)


# Schemes securesystemslib signs natively; the others are signed over PAE with cryptography directly.
SSLIB_SCHEME = {
    "p256": "ecdsa-sha2-nistp256",
    "p384-sha384": "ecdsa-sha2-nistp384",
    "rsa-pkcs1": "rsa-pkcs1v15-sha256",
    "rsa-pss": "rsassa-pss-sha256",
    "ed25519": "ed25519",
}

keys = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384-sha384": ec.generate_private_key(ec.SECP384R1()),
    "p384-sha256": ec.generate_private_key(ec.SECP384R1()),
    "rsa-pkcs1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa-pss": rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "rsa-pss-max": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}

for kind, key in keys.items():
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(os.path.join(out, kind + ".pub.pem"), "wb") as f:
        f.write(pub)
    with open(os.path.join(out, kind + ".payload.json"), "wb") as f:
        f.write(payload)
    with open(os.path.join(out, kind + ".sig.b64"), "w") as f:
        f.write(base64.b64encode(raw_sign(kind, key, payload)).decode())
    if kind in SSLIB_SCHEME:
        public = SSlibKey.from_crypto(key.public_key(), scheme=SSLIB_SCHEME[kind])
        envelope = Envelope(payload=statement, payload_type=PAYLOAD_TYPE, signatures={})
        envelope.sign(CryptoSigner(key, public))
        doc = envelope.to_dict()
    else:
        sig = raw_sign(kind, key, pae(PAYLOAD_TYPE, statement))
        doc = {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(statement).decode(),
            "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
        }
    with open(os.path.join(out, kind + ".att.json"), "w") as f:
        json.dump(doc, f)
print("signed", ", ".join(keys))
