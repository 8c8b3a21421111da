//! Pusher's request signing: the server SDKs sign each HTTP API request
//! with the app's secret — `auth_signature`, the hex HMAC-SHA256 of
//! `"METHOD\nPATH\nQUERY"`, where QUERY is every other parameter sorted by
//! name, `name=value` joined by `&` — with `auth_timestamp` within ten
//! minutes and, for a body, its hex MD5 as `body_md5`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::auth::constant_time_eq;
use crate::config::PusherApp;

/// How far `auth_timestamp` may be from now.
pub const MAX_SKEW_S: u64 = 600;

/// Why a request's signature was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A parameter is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `auth_key` is not the app's key.
    #[error("unknown auth_key")]
    WrongKey,
    /// `auth_timestamp` is too far from now.
    #[error(
        "timestamp expired: the auth_timestamp is more than {MAX_SKEW_S} s from the server's time"
    )]
    Expired,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// `auth_signature` does not match.
    #[error("invalid signature: check the app secret")]
    Mismatch,
}

/// The hex HMAC-SHA256 of `message` with `secret`.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `auth` (`"KEY:SIGNATURE"`, from the app's auth endpoint) lets
/// `socket_id` subscribe to the private or presence `channel`: the
/// signature is the hex HMAC-SHA256 of `"SOCKET_ID:CHANNEL"` (and
/// `":CHANNEL_DATA"` for presence) with the app's secret.
pub fn channel_auth_ok(
    app: &PusherApp,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    signs(app, &message, auth)
}

/// Whether `auth` signs in `socket_id` as `user_data` (`pusher:signin`):
/// the hex HMAC-SHA256 of `"SOCKET_ID::user::USER_DATA"`.
pub fn user_auth_ok(app: &PusherApp, socket_id: &str, user_data: &str, auth: &str) -> bool {
    signs(app, &format!("{socket_id}::user::{user_data}"), auth)
}

/// Whether `auth` is `"KEY:SIGNATURE"` of `message` by the app.
fn signs(app: &PusherApp, message: &str, auth: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    constant_time_eq(key.as_bytes(), app.key.as_bytes())
        && constant_time_eq(
            hmac_hex(&app.secret, message).as_bytes(),
            signature.as_bytes(),
        )
}

/// Checks a request to the HTTP API of `app`: `query` is the raw query
/// string, `now` Unix seconds.
pub fn check(
    app: &PusherApp,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now: u64,
) -> Result<(), SignError> {
    // Names are compared lowercase; a repeated name keeps its last value.
    let mut params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    let signature = params
        .remove("auth_signature")
        .ok_or(SignError::Missing("auth_signature"))?;
    let key = params
        .get("auth_key")
        .ok_or(SignError::Missing("auth_key"))?;
    if !constant_time_eq(key.as_bytes(), app.key.as_bytes()) {
        return Err(SignError::WrongKey);
    }
    let t: u64 = params
        .get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or(SignError::Missing("auth_timestamp"))?;
    if now.abs_diff(t) > MAX_SKEW_S {
        return Err(SignError::Expired);
    }
    if !body.is_empty() {
        let md5 = params
            .get("body_md5")
            .ok_or(SignError::Missing("body_md5"))?;
        if !constant_time_eq(md5.as_bytes(), hex(&Md5::digest(body)).as_bytes()) {
            return Err(SignError::BodyMd5);
        }
    }
    let sorted = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let expected = hmac_hex(&app.secret, &format!("{method}\n{path}\n{sorted}"));
    if constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        Ok(())
    } else {
        Err(SignError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            client_events: false,
            max_connections: 0,
            namespace: "pusher".into(),
            webhook_url: None,
            webhook_events: Vec::new(),
        }
    }

    #[test]
    fn pushers_documented_example_verifies() {
        // The worked example of Pusher's HTTP API reference ("Generating
        // authentication signatures").
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(hex(&Md5::digest(body)), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let at = 1_353_088_179;
        assert_eq!(
            check(&app(), "POST", "/apps/3/events", query, body, at),
            Ok(())
        );
        assert_eq!(
            check(&app(), "POST", "/apps/3/events", query, body, at + 601),
            Err(SignError::Expired)
        );
        assert_eq!(
            check(&app(), "POST", "/apps/3/events", query, b"{}", at),
            Err(SignError::BodyMd5)
        );
        assert_eq!(
            check(&app(), "POST", "/apps/4/events", query, body, at),
            Err(SignError::Mismatch)
        );
        let no_sig = query.split("&auth_signature").next().unwrap();
        assert_eq!(
            check(&app(), "POST", "/apps/3/events", no_sig, body, at),
            Err(SignError::Missing("auth_signature"))
        );
    }
}
