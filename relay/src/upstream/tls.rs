//! TLS to the upstream with rustls (ring provider), following libpq's `sslmode` semantics, and
//! the `tls-server-end-point` channel-binding hash for SCRAM-SHA-256-PLUS.
//!
//! What each mode verifies (libpq, `fe-secure-openssl.c`):
//! * a root certificate is "available" when `sslrootcert` is set, or `~/.postgresql/root.crt`
//!   exists;
//! * `allow`/`prefer`/`require`: with a root available the chain is verified (as `verify-ca`);
//!   without one, any certificate is accepted (encryption without authentication);
//! * `verify-ca`: chain verified against the roots, host name not checked;
//! * `verify-full`: chain and host name (`host`, not `hostaddr`) verified;
//! * `verify-ca`/`verify-full` without a root available are configuration errors.
//!
//! Even without verification the handshake signatures are checked, so the peer holds the key of
//! the certificate it presented (which is what channel binding relies on).
//!
//! Differences from libpq/OpenSSL: host names are matched against subjectAltName only (webpki
//! ignores the subject CN), `sslrootcert=system` and CRLs are not supported.
//!
//! The configuration is built per connection attempt, so renewed certificate files are picked
//! up on reconnect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use super::error::UpstreamError;
use crate::config::conninfo::{ConnInfo, SslMode, TlsMinVersion};

/// A ready TLS client configuration and the name to present and verify.
pub(crate) struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

fn config_err(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::TlsConfig(what.to_string())
}

/// libpq's default TLS files live in `~/.postgresql/`.
fn default_file(home: Option<&Path>, name: &str) -> Option<PathBuf> {
    home.map(|h| h.join(".postgresql").join(name))
}

/// Builds the TLS setup for connecting to `host` under `ci`'s sslmode. `home` locates the
/// default root and client certificate files.
pub(crate) fn setup(
    ci: &ConnInfo,
    host: &str,
    home: Option<&Path>,
) -> Result<TlsSetup, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match ci.ssl_min_protocol_version {
        TlsMinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMinVersion::Tls13 => &[&rustls::version::TLS13],
    };

    let roots = load_roots(ci, home)?;
    let verifier: Arc<dyn ServerCertVerifier> = match (ci.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => webpki_verifier(roots, &provider)?,
        (_, Some(roots)) => Arc::new(IgnoreHostName(webpki_verifier(roots, &provider)?)),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            let path = ci
                .sslrootcert
                .clone()
                .or_else(|| default_file(home, "root.crt"))
                .unwrap_or_else(|| PathBuf::from("~/.postgresql/root.crt"));
            return Err(config_err(format!(
                "root certificate file \"{}\" does not exist; either provide the file or change sslmode to disable server certificate verification",
                path.display()
            )));
        }
        (_, None) => Arc::new(AcceptAnyCert(provider.clone())),
    };

    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match load_client_cert(ci, home)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(config_err)?,
        None => builder.with_no_client_auth(),
    };

    let server_name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => match ServerName::try_from(host.to_string()) {
            Ok(name) => name,
            Err(_) if ci.sslmode == SslMode::VerifyFull => {
                return Err(config_err(format!(
                    "host name \"{host}\" cannot be verified: not a valid DNS name"
                )));
            }
            Err(_) => {
                // Not verified in this mode; a placeholder keeps rustls happy and no SNI is sent.
                config.enable_sni = false;
                ServerName::try_from("invalid.invalid").map_err(config_err)?
            }
        },
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
    })
}

fn load_roots(ci: &ConnInfo, home: Option<&Path>) -> Result<Option<RootCertStore>, UpstreamError> {
    let path = match &ci.sslrootcert {
        Some(p) if p.as_os_str() == "system" => {
            return Err(config_err(
                "sslrootcert=system is not supported; give a CA file",
            ));
        }
        Some(p) => p.clone(),
        None => match default_file(home, "root.crt").filter(|p| p.exists()) {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let mut roots = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(&path).map_err(|e| {
        config_err(format!(
            "could not read root certificate file \"{}\": {e}",
            path.display()
        ))
    })?;
    for cert in iter {
        let cert = cert.map_err(|e| {
            config_err(format!("root certificate file \"{}\": {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            config_err(format!("root certificate file \"{}\": {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(config_err(format!(
            "root certificate file \"{}\" holds no certificate",
            path.display()
        )));
    }
    Ok(Some(roots))
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate, if the (given or default) certificate file exists. As in libpq a
/// missing certificate file means "no client certificate", but a certificate without its key
/// is an error.
fn load_client_cert(
    ci: &ConnInfo,
    home: Option<&Path>,
) -> Result<Option<ClientCert>, UpstreamError> {
    let Some(cert_path) = ci
        .sslcert
        .clone()
        .or_else(|| default_file(home, "postgresql.crt"))
    else {
        return Ok(None);
    };
    if !cert_path.exists() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_err(format!(
                "could not load certificate file \"{}\": {e}",
                cert_path.display()
            ))
        })?;
    let key_path = ci
        .sslkey
        .clone()
        .or_else(|| default_file(home, "postgresql.key"))
        .ok_or_else(|| config_err("certificate present, but not private key file"))?;
    if !key_path.exists() {
        return Err(config_err(format!(
            "certificate present, but not private key file \"{}\"",
            key_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        config_err(format!(
            "could not load private key file \"{}\": {e}",
            key_path.display()
        ))
    })?;
    Ok(Some((certs, key)))
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, UpstreamError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(config_err)
}

/// `verify-ca`: the chain must verify, the host name may differ.
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a root certificate: any certificate, but real handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
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

/// RFC 5929 `tls-server-end-point` data for a server certificate (DER): its hash with the
/// digest of its signature algorithm, MD5 and SHA-1 replaced by SHA-256 (PostgreSQL's
/// `be_tls_get_certificate_hash`). `None` for algorithms without a single digest (RSA-PSS,
/// Ed25519, ...), where PostgreSQL itself cannot bind either, or for undecodable DER.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    // OID contents (without tag/length). RSA: 1.2.840.113549.1.1.x, ECDSA: 1.2.840.10045.4.x.
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    enum H {
        S224,
        S256,
        S384,
        S512,
    }
    let h = if let Some(rest) = oid.strip_prefix(RSA) {
        match rest {
            [0x04] | [0x05] | [0x0B] => H::S256, // md5, sha1, sha256 WithRSAEncryption
            [0x0C] => H::S384,
            [0x0D] => H::S512,
            [0x0E] => H::S224,
            _ => return None,
        }
    } else if oid == ECDSA_SHA1 {
        H::S256
    } else if let Some(rest) = oid.strip_prefix(ECDSA_SHA2) {
        match rest {
            [0x01] => H::S224,
            [0x02] => H::S256,
            [0x03] => H::S384,
            [0x04] => H::S512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match h {
        H::S224 => sha2::Sha224::digest(cert_der).to_vec(),
        H::S256 => sha2::Sha256::digest(cert_der).to_vec(),
        H::S384 => sha2::Sha384::digest(cert_der).to_vec(),
        H::S512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// One DER TLV: `(tag, contents, rest)`.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len0, b) = b.split_first()?;
    let (len, b) = if len0 < 0x80 {
        (len0 as usize, b)
    } else {
        let n = (len0 & 0x7F) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let (lb, b) = (b.get(..n)?, b.get(n..)?);
        (lb.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize), b)
    };
    Some((tag, b.get(..len)?, b.get(len..)?))
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, .. }`,
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, .. }`.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, body, _) = der_tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = der_tlv(body)? else {
        return None;
    };
    let (SEQUENCE, alg, _) = der_tlv(rest)? else {
        return None;
    };
    let (OID, oid, _) = der_tlv(alg)? else {
        return None;
    };
    Some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate-shaped DER: SEQUENCE { SEQUENCE {}, SEQUENCE { OID }, BIT STRING }.
    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn end_point_hash_follows_signature_algorithm() {
        let sha256_rsa = fake_cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B]);
        let h = tls_server_end_point(&sha256_rsa).unwrap();
        assert_eq!(h, sha2::Sha256::digest(&sha256_rsa).to_vec());
        let sha1_rsa = fake_cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05]);
        assert_eq!(
            tls_server_end_point(&sha1_rsa).unwrap().len(),
            32,
            "SHA-1 maps to SHA-256"
        );
        let sha384_ecdsa = fake_cert(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03]);
        assert_eq!(tls_server_end_point(&sha384_ecdsa).unwrap().len(), 48);
        let ed25519 = fake_cert(&[0x2B, 0x65, 0x70]);
        assert_eq!(tls_server_end_point(&ed25519), None);
    }

    #[test]
    fn der_walker_rejects_garbage() {
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x85, 0, 0, 0, 0, 0]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x10, 0x30]), None);
        assert_eq!(tls_server_end_point(&[0x31, 0x00]), None);
    }
}
