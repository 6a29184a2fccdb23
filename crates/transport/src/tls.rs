//! The relay's certificate and the client's pinning verifier.

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use sha2::{Digest, Sha256};

use crate::TransportError;

/// A relay's TLS identity, as DER.
pub struct RelayCert {
    /// The self-signed certificate.
    pub cert_der: Vec<u8>,
    /// Its PKCS#8 private key.
    pub key_der: Vec<u8>,
}

impl RelayCert {
    /// Generates a fresh self-signed certificate (ECDSA P-256) for `names` (host names or IP
    /// addresses; they only matter to browsers, clients pin the certificate itself). It looks
    /// like what a small site makes for itself: its first name as the common name, a random
    /// serial, valid from today for 397 days (the longest browsers accept), rather than a
    /// library's tell-tale defaults.
    pub fn generate(names: Vec<String>) -> Result<Self, TransportError> {
        let setup = |e: rcgen::Error| TransportError::Setup(e.to_string());
        let mut params = rcgen::CertificateParams::new(names.clone()).map_err(setup)?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_else(|| "localhost".into()));
        params.distinguished_name = dn;
        let mut serial = [0u8; 16];
        getrandom(&mut serial)?;
        serial[0] &= 0x7f; // a positive integer
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
            .unwrap_or(0);
        let date = |days: i64| {
            let (y, m, d) = tamizdat_wire::civil::date_from_days(days);
            rcgen::date_time_ymd(
                i32::try_from(y).unwrap_or(2026),
                u8::try_from(m).unwrap_or(1),
                u8::try_from(d).unwrap_or(1),
            )
        };
        params.not_before = date(today);
        params.not_after = date(today + 397);
        let key = rcgen::KeyPair::generate().map_err(setup)?;
        let cert = params.self_signed(&key).map_err(setup)?;
        Ok(Self { cert_der: cert.der().to_vec(), key_der: key.serialize_der() })
    }

    /// The pin a relay link carries: SHA-256 of the certificate.
    pub fn pin(&self) -> Vec<u8> {
        cert_pin(&self.cert_der)
    }

    /// The rustls server configuration. HTTP/1.1 only, like a small static site.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TransportError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.cert_der.clone())], key)
            .map_err(|e| TransportError::Setup(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Returning clients resume with a ticket instead of a full handshake, and the relay
        // keeps no per-client state for it (the ticket keys rotate).
        config.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TransportError::Setup(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// Random bytes from the operating system, through the TLS provider's generator.
pub fn getrandom(out: &mut [u8]) -> Result<(), TransportError> {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(out)
        .map_err(|_| TransportError::Setup("no randomness".into()))
}

/// SHA-256 of a DER certificate.
pub fn cert_pin(cert_der: &[u8]) -> Vec<u8> {
    Sha256::digest(cert_der).to_vec()
}

/// Trusts exactly one certificate, by its SHA-256, and still checks that the server proves
/// possession of its key in the handshake.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if cert_pin(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            // Surfaced as `TransportError::WrongCertificate` by the dialer.
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts only the pinned certificate.
pub fn pinned_client_config(pin: &[u8]) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PinnedVerifier { pin: pin.to_vec(), algorithms: provider.signature_verification_algorithms };
    let mut config = ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
