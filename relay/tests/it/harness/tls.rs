//! [`TestCerts`]: certificates for the TLS tests, a throw-away CA and a server certificate for
//! `localhost` and 127.0.0.1 signed by it, made with openssl(1) in a temp dir that the
//! PostgreSQL user owns (a server refuses a key file it does not own).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::os::{self, TestDir};
use super::WAIT;

/// `ca.crt`, `server.crt` and `server.key` (mode 0600) in a temp dir. Valid for two days.
pub struct TestCerts {
    dir: TestDir,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = TestDir::new("certs");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            os::run_ok(Command::new("openssl").current_dir(d).args(args), WAIT);
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=walrelay test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-sha256",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let certs = TestCerts { dir };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(certs.server_key(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        for file in [certs.ca_cert(), certs.server_cert(), certs.server_key()] {
            os::give_to_pg_user(&file);
        }
        certs
    }

    /// The temp dir holding the files (tests may put their own files there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, for a client's `sslrootcert`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The server certificate (not a CA: as a root it verifies nothing).
    pub fn server_cert(&self) -> PathBuf {
        self.dir().join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir().join("server.key")
    }
}
