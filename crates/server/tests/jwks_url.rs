//! JWKS from an https URL: a local identity provider with a self-signed CA
//! given in the config; key rotation picked up through an unknown `kid`; a
//! flood of unknown `kid`s does not flood the provider; without the CA the
//! provider is not trusted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A P-256 signing key and its public JWK under `kid`.
struct SigningKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let key = KeyPair::generate().unwrap();
    let raw = key.public_key_raw(); // 0x04 || x || y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    SigningKey {
        encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
    }
}

fn token(key: &SigningKey, kid: &str, user: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let exp = tidings_server::auth::unix_now() + 3600;
    jsonwebtoken::encode(&header, &json!({"sub": user, "exp": exp}), &key.encoding).unwrap()
}

/// A CA (its PEM) and a TLS config for 127.0.0.1 signed by it.
fn pki() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tidings test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    // ring, as the server's own TLS clients use (no aws-lc build).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
        .unwrap();
    (ca_cert.pem(), Arc::new(tls))
}

/// The identity provider: serves the current key set over https and
/// counts the fetches.
struct Provider {
    url: String,
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
}

async fn provider(tls: Arc<rustls::ServerConfig>) -> Arc<Provider> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Arc::new(Provider {
        url: format!("https://{}/jwks", listener.local_addr().unwrap()),
        keys: Mutex::new(Vec::new()),
        fetches: AtomicUsize::new(0),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let served = p.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, p) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust us
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                p.fetches.fetch_add(1, Ordering::SeqCst);
                let body = json!({"keys": *p.keys.lock()}).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    p
}

async fn connects(server: &tidings_server::Server, token: &str) -> Value {
    let mut raw = Raw::open(server).await;
    raw.call(json!({"op": "connect", "token": token})).await
}

#[tokio::test]
async fn keys_come_from_the_url_rotate_by_kid_and_a_flood_does_not_flood_the_provider() {
    let (ca_pem, tls) = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let idp = provider(tls).await;
    let (k1, k2) = (signing_key("k1"), signing_key("k2"));
    idp.keys.lock().push(k1.jwk.clone());

    let mut c = config();
    c.auth.token_jwks_url = Some(idp.url.clone());
    c.auth.token_jwks_ca = Some(ca_file.clone());
    // Long enough that the 40 forged tokens below all fall in one interval.
    c.auth.token_jwks_min_interval = Duration::from_secs(3);
    let server = start_with(c.clone()).await;
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "fetched at start");

    let r = connects(&server, &token(&k1, "k1", "alice")).await;
    assert_eq!(r["ok"]["user"], "alice", "{r}");

    // The provider rotates in k2; a token naming it makes the server look again.
    idp.keys.lock().push(k2.jwk.clone());
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = connects(&server, &token(&k2, "k2", "bob")).await;
    assert_eq!(r["ok"]["user"], "bob", "{r}");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    // Made-up key ids: refused, and the provider is asked at most once more.
    let before = idp.fetches.load(Ordering::SeqCst);
    for i in 0..40 {
        let r = connects(&server, &token(&k2, &format!("forged-{i}"), "mallory")).await;
        assert_eq!(error_code(&r), 103, "{r}");
    }
    let asked = idp.fetches.load(Ordering::SeqCst) - before;
    assert!(asked <= 1, "40 unknown kids made {asked} fetches");
    server.shutdown().await;

    // Without the CA, the provider's certificate is not trusted: no keys.
    c.auth.token_jwks_ca = None;
    let server = start_with(c).await;
    let r = connects(&server, &token(&k1, "k1", "alice")).await;
    assert_eq!(error_code(&r), 103, "{r}");
    server.shutdown().await;
}
