//! The downstream TLS identity (`--tls-cert`, `--tls-key`): a rustls `ServerConfig` (ring
//! provider, TLS 1.2 and 1.3, ALPN `postgresql`) and the certificate's
//! `tls-server-end-point` hash for SCRAM-SHA-256-PLUS.
//!
//! * PEM files: the certificate file may hold a chain (leaf first); the key may be PKCS#8,
//!   PKCS#1 (RSA) or SEC1 (EC). The key must belong to the certificate.
//! * The key file's permissions are checked as PostgreSQL's
//!   `check_ssl_key_file_permissions` does: a regular file, no group or world access (0600),
//!   or, when owned by root, at most group read (0640). Ownership itself is not checked.
//! * ALPN: one configuration serves both SSLRequest-negotiated and direct TLS. A client that
//!   offers ALPN without `postgresql` fails the handshake (no_application_protocol), as with
//!   PostgreSQL 17; one that offers none is fine after an SSLRequest, and after direct TLS is
//!   refused by [`check_direct_alpn`].
//! * Channel binding: the hash follows the certificate's signature algorithm (SHA-256 for
//!   MD5/SHA-1/SHA-256-signed certificates, SHA-384, SHA-512), computed by the same function
//!   the upstream client uses. A certificate signed with Ed25519 or RSA-PSS gives no hash:
//!   SCRAM-SHA-256-PLUS is then not offered (PostgreSQL would fail the exchange instead).
//! * Reload (SIGHUP): [`ServerTls::reload`] builds a new `Arc<ServerConfig>` from the same
//!   files; on error the caller keeps the old one. Established connections keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use super::scram::Binding;
use crate::upstream::tls::tls_server_end_point;

/// The ALPN protocol name of PostgreSQL 17+.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why the certificate pair could not be used. Messages name the file as PostgreSQL's
/// `be_tls_init` does.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not load server certificate file \"{file}\": {reason}")]
    Cert { file: String, reason: String },
    #[error("could not load private key file \"{file}\": {reason}")]
    Key { file: String, reason: String },
    #[error("private key file \"{file}\" is not a regular file")]
    KeyNotRegular { file: String },
    #[error("private key file \"{file}\" has group or world access (DETAIL: File must have permissions u=rw (0600) or less if owned by the database user, or permissions u=rw,g=r (0640) or less if owned by root.)")]
    KeyPermissions { file: String },
    #[error("check of private key failed: {reason} (certificate \"{cert}\", key \"{key}\")")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// A loaded certificate pair, ready for new connections.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    binding: Binding,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("channel_binding", &matches!(self.binding, Binding::Tls(_)))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM pair, checks the key file's permissions, and builds the configuration.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
        let cert_name = cert_file.display().to_string();
        let key_name = key_file.display().to_string();
        let cert_pem = std::fs::read(cert_file).map_err(|e| TlsError::Cert {
            file: cert_name.clone(),
            reason: e.to_string(),
        })?;
        check_key_permissions(key_file)?;
        let key_pem = std::fs::read(key_file).map_err(|e| TlsError::Key {
            file: key_name.clone(),
            reason: e.to_string(),
        })?;
        let mut tls = ServerTls::from_pem(&cert_pem, &key_pem, &cert_name, &key_name)?;
        tls.cert_file = cert_file.to_path_buf();
        tls.key_file = key_file.to_path_buf();
        Ok(tls)
    }

    /// Builds the configuration from PEM text (no file access, no permission check); the
    /// names are for messages.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> Result<ServerTls, TlsError> {
        let cert_err = |reason: String| TlsError::Cert {
            file: cert_name.to_string(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(e.to_string()))?;
        let Some(leaf) = certs.first() else {
            return Err(cert_err("the file holds no certificate".into()));
        };
        let binding = match tls_server_end_point(leaf.as_ref()) {
            Some(hash) => Binding::Tls(hash),
            None => Binding::TlsUnbound,
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
            file: key_name.to_string(),
            reason: match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "the file holds no private key".to_string()
                }
                other => other.to_string(),
            },
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| cert_err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Mismatch {
                cert: cert_name.to_string(),
                key: key_name.to_string(),
                reason: e.to_string(),
            })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            binding,
            cert_file: PathBuf::from(cert_name),
            key_file: PathBuf::from(key_name),
        })
    }

    /// Loads the same files again (SIGHUP), giving a new configuration.
    pub fn reload(&self) -> Result<ServerTls, TlsError> {
        ServerTls::load(&self.cert_file, &self.key_file)
    }

    /// The configuration for `tokio_rustls::TlsAcceptor::from`.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// What SCRAM can bind to on connections using this identity.
    pub fn binding(&self) -> Binding {
        self.binding.clone()
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    pub fn key_file(&self) -> &Path {
        &self.key_file
    }
}

/// PostgreSQL's `check_ssl_key_file_permissions`, less the ownership test.
pub fn check_key_permissions(key_file: &Path) -> Result<(), TlsError> {
    let file = key_file.display().to_string();
    let meta = std::fs::metadata(key_file).map_err(|e| TlsError::Key {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(TlsError::KeyNotRegular { file });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        let too_open = if meta.uid() == 0 {
            mode & 0o037 != 0
        } else {
            mode & 0o077 != 0
        };
        if too_open {
            return Err(TlsError::KeyPermissions { file });
        }
    }
    Ok(())
}

/// Direct TLS (PostgreSQL 17+, no SSLRequest) requires the client to have negotiated ALPN
/// `postgresql`. On `Err`, log the message and close the connection without an error
/// response, as PostgreSQL does (`ProcessSSLStartup`, a COMMERROR).
pub fn check_direct_alpn(negotiated: Option<&[u8]>) -> Result<(), &'static str> {
    if negotiated == Some(ALPN_POSTGRESQL) {
        Ok(())
    } else {
        Err("received direct SSL connection request without ALPN protocol negotiation extension")
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
    use sha2::Digest;

    use super::*;
    use crate::access::scram::{self, MockKey, ScramExchange, Step, SCRAM_SHA_256_PLUS};
    use crate::access::users::{format_entry, ScramVerifier, UserList};

    // Self-signed test identities, valid for 100 years, SAN localhost and 127.0.0.1, made with
    // `openssl req -x509 -newkey rsa:2048 -sha256` (and `ec -pkeyopt
    // ec_paramgen_curve:P-384 -sha384`, and `ed25519`) `-addext
    // basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature`.
    const RSA_CRT: &[u8] = include_bytes!("testdata/rsa.crt");
    const RSA_KEY: &[u8] = include_bytes!("testdata/rsa.key");
    const EC384_CRT: &[u8] = include_bytes!("testdata/ec384.crt");
    const EC384_KEY: &[u8] = include_bytes!("testdata/ec384.key");
    const ED25519_CRT: &[u8] = include_bytes!("testdata/ed25519.crt");
    const ED25519_KEY: &[u8] = include_bytes!("testdata/ed25519.key");

    fn client_config(root_pem: &[u8], alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(cfg)
    }

    /// Runs a TLS handshake in memory; returns both ends.
    fn handshake(
        server: &ServerTls,
        client: Arc<ClientConfig>,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap())?;
        let mut s = ServerConnection::new(server.config())?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
        }
        panic!("handshake did not finish");
    }

    /// Moves the client's pending records to the server.
    fn pump(c: &mut ClientConnection, s: &mut ServerConnection) {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
    }

    #[test]
    fn alpn_for_direct_and_negotiated_tls() {
        let server = ServerTls::from_pem(RSA_CRT, RSA_KEY, "rsa.crt", "rsa.key").unwrap();
        // PostgreSQL 17 libpq offers "postgresql".
        let (_, s) = handshake(&server, client_config(RSA_CRT, &[ALPN_POSTGRESQL])).unwrap();
        assert_eq!(s.alpn_protocol(), Some(ALPN_POSTGRESQL));
        assert_eq!(check_direct_alpn(s.alpn_protocol()), Ok(()));
        // Older clients offer nothing: fine after SSLRequest, refused for direct TLS.
        let (_, s) = handshake(&server, client_config(RSA_CRT, &[])).unwrap();
        assert_eq!(s.alpn_protocol(), None);
        assert_eq!(
            check_direct_alpn(s.alpn_protocol()),
            Err("received direct SSL connection request without ALPN protocol negotiation extension")
        );
        // Another protocol only: the handshake fails.
        assert!(handshake(&server, client_config(RSA_CRT, &[b"h2"])).is_err());
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let der = |pem: &[u8]| CertificateDer::from_pem_slice(pem).unwrap();
        let rsa = ServerTls::from_pem(RSA_CRT, RSA_KEY, "rsa.crt", "rsa.key").unwrap();
        assert_eq!(
            rsa.binding(),
            Binding::Tls(sha2::Sha256::digest(der(RSA_CRT).as_ref()).to_vec())
        );
        let ec = ServerTls::from_pem(EC384_CRT, EC384_KEY, "ec384.crt", "ec384.key").unwrap();
        assert_eq!(
            ec.binding(),
            Binding::Tls(sha2::Sha384::digest(der(EC384_CRT).as_ref()).to_vec())
        );
        let ed = ServerTls::from_pem(ED25519_CRT, ED25519_KEY, "ed.crt", "ed.key").unwrap();
        assert_eq!(ed.binding(), Binding::TlsUnbound);
        assert_eq!(scram::mechanisms(&ed.binding()), &["SCRAM-SHA-256"]);
        assert_eq!(
            scram::mechanisms(&rsa.binding()),
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        let (_, _) = handshake(&ed, client_config(ED25519_CRT, &[])).unwrap();
        assert!(!format!("{rsa:?}").contains("BEGIN"));
    }

    /// SCRAM-SHA-256-PLUS over a real TLS session: the client computes the binding from the
    /// certificate it received (the upstream side's function), the server from its own.
    #[test]
    fn plus_exchange_over_tls() {
        for (crt, key) in [(RSA_CRT, RSA_KEY), (EC384_CRT, EC384_KEY)] {
            let server = ServerTls::from_pem(crt, key, "c", "k").unwrap();
            let (mut c, mut s) =
                handshake(&server, client_config(crt, &[ALPN_POSTGRESQL])).unwrap();
            let peer = c.peer_certificates().unwrap().first().unwrap().clone();
            let client_hash = tls_server_end_point(peer.as_ref()).unwrap();

            let v = ScramVerifier::generate(b"pw").unwrap();
            let list = UserList::parse(&format_entry("rep", &v.encode()), "f").unwrap();
            let mut client =
                ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(client_hash));
            let mut body = SCRAM_SHA_256_PLUS.as_bytes().to_vec();
            body.push(0);
            body.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
            body.extend_from_slice(client.message());
            // Carry the client's message through the TLS session, as on the wire.
            c.writer().write_all(&body).unwrap();
            pump(&mut c, &mut s);
            let mut got = vec![0u8; body.len()];
            s.reader().read_exact(&mut got).unwrap();

            let (mut ex, step) = ScramExchange::from_initial_response(
                "rep",
                list.lookup("rep"),
                &MockKey::random(),
                server.binding(),
                &got,
            )
            .unwrap();
            let Step::Continue(sf) = step else { panic!() };
            client.update(&sf).unwrap();
            let Step::Success(fin) = ex.step(Some(client.message())).unwrap() else {
                panic!()
            };
            client.finish(&fin).unwrap();
            assert!(ex.channel_bound());
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let crt = write("server.crt", RSA_CRT, 0o644);
        let key = write("server.key", RSA_KEY, 0o600);
        let tls = ServerTls::load(&crt, &key).unwrap();
        assert_eq!(tls.cert_file(), crt.as_path());
        // Reload gives a new configuration from the files as they are now.
        let ec_crt = write("server.crt", EC384_CRT, 0o644);
        let _ = write("server.key", EC384_KEY, 0o600);
        let again = tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&tls.config(), &again.config()));
        assert_ne!(tls.binding(), again.binding());
        assert_eq!(ec_crt, crt);

        let open_key = write("open.key", RSA_KEY, 0o644);
        let e = ServerTls::load(&crt, &open_key).unwrap_err().to_string();
        // Tests run as root here; either way the file is named.
        assert!(
            e.starts_with(&format!(
                "private key file \"{}\" has group or world access",
                open_key.display()
            )),
            "{e}"
        );
        if std::fs::metadata(&open_key)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap()
            == 0
        {
            let group_key = write("group.key", EC384_KEY, 0o640);
            ServerTls::load(&crt, &group_key).expect("root-owned 0640 is allowed");
        }
        let missing = dir.path().join("missing.crt");
        let e = ServerTls::load(&missing, &key).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "could not load server certificate file \"{}\": ",
                missing.display()
            )),
            "{e}"
        );
        let e = ServerTls::load(&crt, dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("is not a regular file"), "{e}");
        let empty = write("empty.crt", b"", 0o644);
        let e = ServerTls::load(&empty, &key).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "could not load server certificate file \"{}\": the file holds no certificate",
                empty.display()
            )
        );
        let nokey = write("nokey.key", RSA_CRT, 0o600);
        let e = ServerTls::load(&crt, &nokey).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "could not load private key file \"{}\": the file holds no private key",
                nokey.display()
            )
        );
        // A key that is not the certificate's.
        let other = write("other.key", RSA_KEY, 0o600);
        let e = ServerTls::load(&crt, &other).unwrap_err().to_string();
        assert!(e.starts_with("check of private key failed: "), "{e}");
    }
}
