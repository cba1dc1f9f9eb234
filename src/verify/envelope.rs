//! DSSE envelopes as data: the pre-authentication encoding (PAE) and an envelope with its payload and signatures
//! decoded. Checked by `dsse`, `bundle` and `keyless`.

use serde::Deserialize;

use super::b64;
use super::reason::Rejection;

/// DSSE pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope {
    pub payload_type: String,
    pub payload: String,
    #[serde(default)]
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
pub(super) struct EnvelopeSignature {
    #[serde(default)]
    pub sig: String,
}

/// A parsed envelope with its payload decoded and signatures decoded.
pub(super) struct Decoded {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
}

pub(super) fn decode(envelope: Envelope) -> Result<Decoded, Rejection> {
    let payload = b64(&envelope.payload).map_err(|e| Rejection::MalformedEnvelope(format!("payload: {e}")))?;
    if envelope.signatures.is_empty() {
        return Err(Rejection::MalformedEnvelope("no signatures".into()));
    }
    let signatures = envelope
        .signatures
        .iter()
        .map(|s| b64(&s.sig).map_err(|e| Rejection::MalformedEnvelope(format!("signature: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decoded { payload_type: envelope.payload_type, payload, signatures })
}

pub(super) fn parse(data: &[u8]) -> Result<Decoded, Rejection> {
    let envelope: Envelope = serde_json::from_slice(data).map_err(|e| Rejection::MalformedEnvelope(e.to_string()))?;
    decode(envelope)
}
