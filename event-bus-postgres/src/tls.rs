//! TLS with rustls, following libpq's `sslmode` meanings.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | not verified (as libpq) |
//! | `require` | always; fails against a server without TLS | not verified (as libpq) |
//! | `verify-ca`, `verify-full` | always | verified against the Mozilla (webpki) roots, with the host name |
//!
//! `prefer` and `require` protect against eavesdropping but, as in libpq, not against
//! an active man in the middle; use `verify-full` for that.

use std::sync::Arc;

use event_bus_core::Error;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Rewrites `sslmode=verify-ca`/`verify-full` (which tokio-postgres does not parse) to
/// `sslmode=require` and reports whether certificates must be verified.
pub(crate) fn split_verify_mode(connection_string: &str) -> (String, bool) {
    let mut verify = false;
    let mut out = connection_string.to_owned();
    for mode in ["sslmode=verify-full", "sslmode=verify-ca"] {
        if out.contains(mode) {
            verify = true;
            out = out.replace(mode, "sslmode=require");
        }
    }
    (out, verify)
}

/// The TLS connector: verifying against webpki roots, or encrypting only.
pub(crate) fn connector(verify: bool) -> Result<MakeRustlsConnect, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("url", format!("TLS setup failed: {e}")))?;
    let config = if verify {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate (libpq `sslmode=require`), but still checks that the
/// server holds the key of the certificate it sent.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_are_rewritten() {
        assert_eq!(
            split_verify_mode("host=h sslmode=verify-full"),
            ("host=h sslmode=require".to_owned(), true)
        );
        assert_eq!(
            split_verify_mode("postgres://h/db?sslmode=verify-ca"),
            ("postgres://h/db?sslmode=require".to_owned(), true)
        );
        assert!(!split_verify_mode("host=h sslmode=require").1);
        assert!(connector(true).is_ok() && connector(false).is_ok());
    }
}
