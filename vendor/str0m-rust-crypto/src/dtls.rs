//! DTLS implementation using dimpl with RustCrypto backend.

use std::sync::Arc;
use std::time::Instant;

use str0m_proto::crypto::CryptoError;
use str0m_proto::crypto::DtlsVersion;
use str0m_proto::crypto::dtls::ProtocolVersion;
use str0m_proto::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};

// ============================================================================
// DTLS Provider Implementation
// ============================================================================

#[derive(Debug)]
pub(super) struct RustCryptoDtlsProvider;

impl DtlsProvider for RustCryptoDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // trunkgate spike patch: dimpl 0.9's `rcgen` feature pulls aws-lc-rs,
        // so this provider does not generate certificates. The caller supplies
        // the per-node certificate with `RtcConfig::set_dtls_cert`.
        None
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let dimpl_cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };

        // Create a default dimpl Config with RustCrypto crypto provider
        // ICE verifies return routability before DTLS, making server cookies redundant.
        let build = || {
            let mut builder = dimpl::Config::builder().use_server_cookie(false);
            if let Some(mtu) = mtu {
                builder = builder.mtu(mtu);
            }
            if self.is_test() {
                // We need the DTLS impl to be deterministic for the BWE tests.
                builder = builder.dangerously_set_rng_seed(42);
            }
            builder
                .build()
                .map(Arc::new)
                .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {}", e)))
        };

        // trunkgate patch: `Config::build` validates the crypto provider
        // (a key exchange round trip on every group, P-384 included): about
        // 5 ms of CPU per peer connection. The config depends on no peer,
        // so one is built per MTU and shared (never in tests, whose seeded
        // RNG must start afresh).
        static SHARED: std::sync::Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>> = std::sync::Mutex::new(Vec::new());
        let config = if self.is_test() {
            build()?
        } else {
            let cached = SHARED.lock().ok().and_then(|l| l.iter().find(|(m, _)| *m == mtu).map(|(_, c)| c.clone()));
            match cached {
                Some(c) => c,
                None => {
                    let c = build()?;
                    if let Ok(mut l) = SHARED.lock() {
                        l.push((mtu, c.clone()));
                    }
                    c
                }
            }
        };
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, dimpl_cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, dimpl_cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, dimpl_cert, now),
            _ => {
                return Err(CryptoError::Other(format!(
                    "Unsupported DTLS version: {dtls_version}"
                )));
            }
        };

        Ok(Box::new(RustCryptoDtlsInstance { dtls }))
    }
}

// ============================================================================
// DTLS Instance Wrapper
// ============================================================================

struct RustCryptoDtlsInstance {
    dtls: dimpl::Dtls,
}

impl std::fmt::Debug for RustCryptoDtlsInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustCryptoDtlsInstance").finish()
    }
}

impl DtlsInstance for RustCryptoDtlsInstance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.dtls.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}
