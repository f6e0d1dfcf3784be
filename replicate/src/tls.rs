//! Mutual TLS for the mesh: a private CA, one certificate per region, and the rustls
//! configurations that accept only peers holding a certificate from that CA.
//!
//! Every region's certificate names the region as its DNS subject alternative name, so a
//! dialer verifies it reached the region it meant, and the acceptor learns who dialed.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// ALPN protocol id of the mesh.
pub const ALPN: &[u8] = b"tickmesh-mesh/2";

/// A CA certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct CaPem {
    /// Certificate.
    pub cert: String,
    /// Private key (PKCS#8).
    pub key: String,
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct LeafPem {
    /// Certificate.
    pub cert: String,
    /// Private key (PKCS#8).
    pub key: String,
}

fn rc(e: rcgen::Error) -> Error {
    Error::Tls(format!("certificate generation failed: {e}"))
}

/// Generates a new private CA.
pub fn generate_ca(name: &str) -> Result<CaPem> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(rc)?;
    let cert = params.self_signed(&key).map_err(rc)?;
    Ok(CaPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues a certificate for `region` (usable as TLS server and client) signed by `ca`.
pub fn issue(ca: &CaPem, region: &str, valid_days: u32) -> Result<LeafPem> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(rc)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(rc)?;
    let mut params = CertificateParams::new(vec![region.to_owned()]).map_err(rc)?;
    params.distinguished_name.push(DnType::CommonName, region);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time_now();
    params.not_before = now - std::time::Duration::from_secs(86_400);
    params.not_after = now + std::time::Duration::from_secs(u64::from(valid_days) * 86_400);
    let key = KeyPair::generate().map_err(rc)?;
    let cert = params.signed_by(&key, &issuer).map_err(rc)?;
    Ok(LeafPem { cert: cert.pem(), key: key.serialize_pem() })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Where a node finds its mesh credentials.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate that signs every region (PEM).
    pub ca_cert: PathBuf,
    /// This region's certificate (PEM).
    pub cert: PathBuf,
    /// This region's private key (PEM).
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::File { path: path.to_owned(), source })
}

/// Loaded credentials.
#[derive(Debug)]
pub struct Credentials {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// Loads the three files.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let ca = read(&files.ca_cert)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|e| Error::Tls(format!("{}: not a PEM certificate ({e})", files.ca_cert.display())))?;
            roots
                .add(c)
                .map_err(|e| Error::Tls(format!("{}: unusable CA certificate ({e})", files.ca_cert.display())))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(format!(
                "{} holds no certificate; run `tickmesh certs init`",
                files.ca_cert.display()
            )));
        }
        let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("{}: not a PEM certificate ({e})", files.cert.display())))?;
        if chain.is_empty() {
            return Err(Error::Tls(format!(
                "{} holds no certificate; run `tickmesh certs issue REGION`",
                files.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|e| Error::Tls(format!("{}: not a PEM private key ({e})", files.key.display())))?;
        Ok(Credentials { roots: Arc::new(roots), chain, key })
    }

    /// From PEM strings (tests and the demo).
    pub fn from_pem(ca: &str, leaf: &LeafPem) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let c = c.map_err(|e| Error::Tls(format!("CA: {e}")))?;
            roots.add(c).map_err(|e| Error::Tls(format!("CA: {e}")))?;
        }
        let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).map_err(|e| Error::Tls(format!("key: {e}")))?;
        Ok(Credentials { roots: Arc::new(roots), chain, key })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: requires a client certificate from the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
                .build()
                .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(format!("server certificate: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let qcfg = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| Error::Tls(e.to_string()))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qcfg));
        sc.transport_config(transport());
        Ok(sc)
    }

    /// Client side: verifies the peer against the CA and presents our certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(format!("client certificate: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let qcfg = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| Error::Tls(e.to_string()))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(qcfg));
        cc.transport_config(transport());
        Ok(cc)
    }
}

/// Packets a receiver may take before it must acknowledge (see [`transport`]).
const ACK_EVERY_PACKETS: u32 = 10;

/// Initial congestion window of mesh connections, bytes (see [`transport`]).
const INITIAL_WINDOW: u64 = 1 << 20;

/// Keep-alive every 300 ms and a 1.5 s idle timeout: a dead peer is noticed within about
/// three missed heartbeats even when no records flow.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(300)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_millis(1500)) {
        t.max_idle_timeout(Some(idle));
    }
    // Flow control bounds a stream to one window per round trip: 8 MiB held a 70 ms link
    // to 0.85M records/s, 32 MiB lets it carry 1.4-1.7M (and 1.4M at 230 ms). Memory is
    // only used while the reader lags; 64 MiB per connection caps that.
    t.stream_receive_window(quinn::VarInt::from_u32(32 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    // Congestion control starts with 1 MiB in flight instead of quinn's ~14 KB (10
    // packets). A mesh link is a long-lived, dedicated path whose steady flow is
    // application-limited (the records a region ingests), and Cubic does not grow its
    // window while application-limited: with 14 KB, a link of 70 ms round trip is held to
    // 200 KB/s, so the first seconds of a feed at 100k records/s (10 MB/s) queue behind
    // the window and its pacer for whole round trips. 1 MiB covers 100 ms of such a feed;
    // a loss still halves it as usual.
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(cubic));
    // The receiver acknowledges every 10th packet (or after 5 ms) instead of every
    // 2nd: a link at 100k records/s sends ~4,000 packets/s, and each acknowledgement costs
    // both ends a wake-up and syscalls. On a 2-vCPU machine this cut a bare quinn stream's
    // CPU by a sixth, and `tickmesh bench mesh`'s p50 added latency through a 70 ms link
    // from ~260 to ~215 µs. Peers without the ack-frequency extension ignore the request.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_EVERY_PACKETS));
    acks.max_ack_delay(Some(std::time::Duration::from_millis(5)));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}
