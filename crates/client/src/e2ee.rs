//! End-to-end encryption, with the TypeScript SDK's envelopes (see
//! docs/sdk.md, "End-to-end encryption"): each device has an ECDH P-256
//! key pair whose public key is in the server's key directory; a message
//! is encrypted under a random AES-256-GCM content key (additional data:
//! the channel), and that key is wrapped for every recipient device under
//! HKDF-SHA256(ECDH(sender, recipient)), bound to the envelope.
//!
//! The server stores and relays only the envelope. Keys are static: there
//! is no forward secrecy (the threat model is in docs/sdk.md).

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tidings_protocol::chat::DeviceKey;

/// What the wrapping keys are derived for (HKDF's info starts with it).
const INFO_PREFIX: &str = "tidings-e2ee-v1";

/// Why a message could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// A key (ours, or one from the directory) is not a P-256 key.
    #[error("not a P-256 key: {0}")]
    BadKey(&'static str),
    /// The data is not an envelope, or not one for this device.
    #[error("not an envelope for this device: {0}")]
    NotForMe(&'static str),
    /// The envelope names another sender than the one who published it.
    #[error("published by {published}, sealed as {sealed}")]
    WrongSender {
        /// Who published it (the server's stamp).
        published: String,
        /// Who the envelope says sealed it.
        sealed: String,
    },
    /// It does not open with these keys: another key, or tampered with.
    #[error("cannot be opened: wrong key, or tampered with")]
    Tampered,
    /// What was opened is not JSON.
    #[error("the plaintext is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
}

/// One recipient's wrapped content key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wrapped {
    /// The recipient user.
    pub user: String,
    /// Their device.
    pub device: String,
    /// The wrap's nonce (base64url).
    pub iv: String,
    /// The wrapped content key (base64url).
    pub k: String,
}

/// Who sealed an envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sender {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
}

/// An encrypted message as it is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Always 1.
    pub e2ee: u8,
    /// Who sealed it.
    pub from: Sender,
    /// The content's nonce (base64url).
    pub iv: String,
    /// The content, encrypted (base64url).
    pub ct: String,
    /// The content key for each recipient device.
    pub to: Vec<Wrapped>,
}

/// This device: its user, its id and its key pair. Persist
/// [`DeviceKeys::secret_bytes`] to keep the device across runs.
#[derive(Clone)]
pub struct DeviceKeys {
    user: String,
    device: String,
    secret: SecretKey,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("user", &self.user)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// A new key pair for `device` of `user`.
    pub fn generate(user: &str, device: &str) -> DeviceKeys {
        loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            // Nearly every 32 bytes are a valid scalar; retry the rest.
            if let Ok(keys) = DeviceKeys::from_secret_bytes(user, device, &bytes) {
                return keys;
            }
        }
    }

    /// The device whose private key is `bytes` (32 bytes, big-endian; the
    /// `d` of its JWK).
    pub fn from_secret_bytes(
        user: &str,
        device: &str,
        bytes: &[u8],
    ) -> Result<DeviceKeys, E2eeError> {
        let secret = SecretKey::from_slice(bytes).map_err(|_| E2eeError::BadKey("private key"))?;
        Ok(DeviceKeys {
            user: user.to_string(),
            device: device.to_string(),
            secret,
        })
    }

    /// The private key's 32 bytes, to keep the device.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.to_bytes().to_vec()
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The public key as the directory takes it: the uncompressed point
    /// in unpadded base64url.
    pub fn public_key(&self) -> String {
        B64.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// The key wrapping content keys between this device and `peer`'s.
    fn wrap_key(&self, peer: &str, info: &str) -> Result<Aes256Gcm, E2eeError> {
        let bytes = B64
            .decode(peer)
            .map_err(|_| E2eeError::BadKey("directory key"))?;
        let public =
            PublicKey::from_sec1_bytes(&bytes).map_err(|_| E2eeError::BadKey("directory key"))?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), public.as_affine());
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(&[]), shared.raw_secret_bytes())
            .expand(info.as_bytes(), &mut key)
            .map_err(|_| E2eeError::BadKey("derived key"))?;
        Aes256Gcm::new_from_slice(&key).map_err(|_| E2eeError::BadKey("derived key"))
    }

    /// Seals `data` for every device in `directory` (the channel's members'
    /// keys: `keys {channel}`, this device's included).
    pub fn seal(
        &self,
        channel: &str,
        data: &RawValue,
        directory: &BTreeMap<String, Vec<DeviceKey>>,
    ) -> Result<Envelope, E2eeError> {
        let content_key = random::<32>();
        let iv = random::<12>();
        let content = Aes256Gcm::new_from_slice(&content_key).map_err(|_| E2eeError::Tampered)?;
        let payload = Payload {
            msg: data.get().as_bytes(),
            aad: channel.as_bytes(),
        };
        let ct = content
            .encrypt(&Nonce::from(iv), payload)
            .map_err(|_| E2eeError::Tampered)?;
        let (iv, ct) = (B64.encode(iv), B64.encode(ct));
        let aad = wrap_aad(channel, &self.user, &self.device, &iv, &ct);
        let mut to = Vec::new();
        for (user, keys) in directory {
            for k in keys {
                let info = info(&self.user, &self.device, user, &k.device, channel);
                // A malformed key in the directory: that device cannot read it.
                let Ok(wrap) = self.wrap_key(&k.key, &info) else {
                    continue;
                };
                let kiv = random::<12>();
                let payload = Payload {
                    msg: &content_key,
                    aad: &aad,
                };
                let wrapped = wrap
                    .encrypt(&Nonce::from(kiv), payload)
                    .map_err(|_| E2eeError::Tampered)?;
                to.push(Wrapped {
                    user: user.clone(),
                    device: k.device.clone(),
                    iv: B64.encode(kiv),
                    k: B64.encode(wrapped),
                });
            }
        }
        Ok(Envelope {
            e2ee: 1,
            from: Sender {
                user: self.user.clone(),
                device: self.device.clone(),
            },
            iv,
            ct,
            to,
        })
    }

    /// Opens `envelope`, published in `channel` by `publisher` (the user the
    /// server stamped on it), with `sender_key`, the sealing device's
    /// public key from the directory.
    pub fn open(
        &self,
        channel: &str,
        publisher: &str,
        envelope: &Envelope,
        sender_key: &str,
    ) -> Result<Box<RawValue>, E2eeError> {
        if envelope.e2ee != 1 {
            return Err(E2eeError::NotForMe("unknown version"));
        }
        if envelope.from.user != publisher {
            return Err(E2eeError::WrongSender {
                published: publisher.to_string(),
                sealed: envelope.from.user.clone(),
            });
        }
        let mine = envelope
            .to
            .iter()
            .find(|t| t.user == self.user && t.device == self.device)
            .ok_or(E2eeError::NotForMe("not sealed for this device"))?;
        let from = &envelope.from;
        let wrap = self.wrap_key(
            sender_key,
            &info(&from.user, &from.device, &self.user, &self.device, channel),
        )?;
        let bytes = |s: &str| B64.decode(s).map_err(|_| E2eeError::Tampered);
        let aad = wrap_aad(
            channel,
            &from.user,
            &from.device,
            &envelope.iv,
            &envelope.ct,
        );
        let (kiv, wrapped) = (bytes(&mine.iv)?, bytes(&mine.k)?);
        let content_key = wrap
            .decrypt(
                &nonce(&kiv)?,
                Payload {
                    msg: &wrapped,
                    aad: &aad,
                },
            )
            .map_err(|_| E2eeError::Tampered)?;
        let content = Aes256Gcm::new_from_slice(&content_key).map_err(|_| E2eeError::Tampered)?;
        let (iv, ct) = (bytes(&envelope.iv)?, bytes(&envelope.ct)?);
        let plain = content
            .decrypt(
                &nonce(&iv)?,
                Payload {
                    msg: &ct,
                    aad: channel.as_bytes(),
                },
            )
            .map_err(|_| E2eeError::Tampered)?;
        let text = String::from_utf8(plain).map_err(|_| E2eeError::Tampered)?;
        Ok(RawValue::from_string(text)?)
    }
}

/// HKDF's info for a wrap from one device to another in `channel`.
fn info(
    from_user: &str,
    from_device: &str,
    to_user: &str,
    to_device: &str,
    channel: &str,
) -> String {
    format!("{INFO_PREFIX}|{from_user}/{from_device}|{to_user}/{to_device}|{channel}")
}

/// A wrapped key's additional data: SHA-256 of the channel, the sender,
/// and the envelope's `iv` and `ct` (so it opens this envelope only).
fn wrap_aad(channel: &str, user: &str, device: &str, iv: &str, ct: &str) -> Vec<u8> {
    Sha256::digest(format!("{channel}|{user}/{device}|{iv}|{ct}")).to_vec()
}

/// A 12-byte AES-GCM nonce from an envelope.
fn nonce(bytes: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>, E2eeError> {
    let bytes: [u8; 12] = bytes.try_into().map_err(|_| E2eeError::Tampered)?;
    Ok(bytes.into())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The envelope in a publication's data, if it is one.
pub fn envelope_of(data: &RawValue) -> Option<Envelope> {
    serde_json::from_str::<Envelope>(data.get())
        .ok()
        .filter(|e| e.e2ee == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(devices: &[&DeviceKeys]) -> BTreeMap<String, Vec<DeviceKey>> {
        let mut dir: BTreeMap<String, Vec<DeviceKey>> = BTreeMap::new();
        for d in devices {
            dir.entry(d.user().to_string())
                .or_default()
                .push(DeviceKey {
                    device: d.device().to_string(),
                    key: d.public_key(),
                });
        }
        dir
    }

    #[test]
    fn every_device_opens_and_nothing_else_does() {
        let laptop = DeviceKeys::generate("alice", "laptop");
        let phone = DeviceKeys::generate("bob", "phone");
        let eve = DeviceKeys::generate("eve", "pc");
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let env = laptop
            .seal("dm:ab", &data, &directory(&[&laptop, &phone]))
            .unwrap();
        assert!(!serde_json::to_string(&env).unwrap().contains("hi\""));
        for d in [&laptop, &phone] {
            let open = d
                .open("dm:ab", "alice", &env, &laptop.public_key())
                .unwrap();
            assert_eq!(open.get(), data.get());
        }
        assert!(matches!(
            eve.open("dm:ab", "alice", &env, &laptop.public_key()),
            Err(E2eeError::NotForMe(_))
        ));
        // Another channel, another sender, a changed byte: refused.
        assert!(
            phone
                .open("dm:xy", "alice", &env, &laptop.public_key())
                .is_err()
        );
        assert!(matches!(
            phone.open("dm:ab", "eve", &env, &laptop.public_key()),
            Err(E2eeError::WrongSender { .. })
        ));
        let mut tampered = env.clone();
        tampered
            .ct
            .replace_range(0..1, if env.ct.starts_with('A') { "B" } else { "A" });
        assert!(
            phone
                .open("dm:ab", "alice", &tampered, &laptop.public_key())
                .is_err()
        );
        // A key survives being kept as bytes.
        let again = DeviceKeys::from_secret_bytes("bob", "phone", &phone.secret_bytes()).unwrap();
        assert_eq!(again.public_key(), phone.public_key());
    }

    /// An envelope the TypeScript SDK sealed (tests/fixtures), opened here.
    #[test]
    fn opens_what_the_typescript_sdk_sealed() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/e2ee_from_typescript.json"))
                .unwrap();
        let d = B64
            .decode(fixture["recipient"]["d"].as_str().unwrap())
            .unwrap();
        let bob = DeviceKeys::from_secret_bytes("bob", "phone", &d).unwrap();
        assert_eq!(bob.public_key(), fixture["recipient"]["key"]);
        let env: Envelope = serde_json::from_value(fixture["envelope"].clone()).unwrap();
        let open = bob
            .open(
                "dm:ab",
                "alice",
                &env,
                fixture["sender"]["key"].as_str().unwrap(),
            )
            .unwrap();
        let got: serde_json::Value = serde_json::from_str(open.get()).unwrap();
        assert_eq!(got, fixture["plaintext"]);
    }
}
