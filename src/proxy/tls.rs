//! TLS configurations (rustls with ring): the upstream client's and the listener's.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Every certificate in a PEM file.
fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{}: no certificate", path.display())));
    }
    Ok(certificates)
}

/// The first private key (PKCS #8, PKCS #1 or SEC1) in a PEM file.
fn private_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// ring: small, and no C build of aws-lc. (rustls now flags it for lacking post-quantum key
/// exchange; switching to aws-lc-rs is a feature change in `Cargo.toml` and this line.)
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for an `https` upstream: the certificates in `ca` as the only
/// roots when given, else the system's; a client certificate when `client` names one. (The
/// connector sets ALPN `http/1.1`.)
pub(crate) fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(target: "fhir_binary_proxy", "system root certificates: {error}");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(invalid(
                    "no system root certificates found: install them (ca-certificates) or give \
                     --upstream-ca"
                        .into(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| invalid(format!("client certificate {}: {e}", cert.display())))?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A client configuration for an `http` upstream, which never uses it: no roots.
pub(crate) fn unused_client_config() -> io::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// The listener's configuration: `cert` (the chain, leaf first) and `key`; ALPN `h2` then
/// `http/1.1`.
pub(crate) fn server_config(cert: &Path, key: &Path) -> io::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_clear_errors() {
        let dir =
            std::env::temp_dir().join(format!("fhir-binary-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = client_config(Some(&empty), None).unwrap_err();
        assert!(error.to_string().contains("no certificate"), "{error}");
        let missing = dir.join("missing.pem");
        let error = server_config(&missing, &missing).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
