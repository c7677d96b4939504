//! TPM access for DPS TPM attestation (dps-protocol §4.1, §4.3), through tss-esapi.
//!
//! [`Tpm`] opens a TCTI (`device:/dev/tpmrm0`, `tabrmd`, `swtpm:host=…,port=…`, `mssim:…`),
//! reads (or creates and persists) the standard EK at `0x81010001` and SRK at `0x81000001`,
//! imports a DPS activation blob as the identity key at `0x81000100`, and HMAC-signs SAS
//! tokens with that key inside the TPM.
//!
//! Works without a resource manager (swtpm, mssim, `/dev/tpm0`): every transient object and
//! session this module creates is flushed before the call returns, also on errors. TPM_RC_RETRY
//! (swtpm answers it on the first use of an algorithm) is resent.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kdps_proto::sas;
use kdps_proto::tpm::{
    self as wire, ActivationBlob, EK_AUTH_POLICY_SHA256, PublicParameters, Scheme,
    SymmetricDefinition, TpmWireError, alg, attr, handle,
};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, EncryptedSecret, IdObject, MaxBuffer, Nonce, Private,
    SymmetricDefinition as EsysSymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as EsysError};

/// How often a command answered with TPM_RC_RETRY / YIELDED / TESTING is resent.
const MAX_RETRIES: usize = 5;

/// `TPM2B_MAX_BUFFER` in the TSS headers: the most `TPM2_HMAC` takes in one command.
const MAX_HMAC_INPUT: usize = 1024;

/// A step of [`Tpm::import_activation`], named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    /// StartAuthSession for the EK policy.
    StartPolicySession,
    /// PolicySecret(TPM_RH_ENDORSEMENT).
    PolicySecret,
    /// ActivateCredential: recovering the inner wrapper key with the EK.
    ActivateCredential,
    /// Import of the duplicated identity key under the SRK.
    Import,
    /// Load of the imported key.
    Load,
    /// EvictControl removing the previous identity key at `0x81000100`.
    EvictOld,
    /// EvictControl persisting the new identity key at `0x81000100`.
    Persist,
}

impl fmt::Display for ImportStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StartPolicySession => "StartAuthSession",
            Self::PolicySecret => "PolicySecret(endorsement)",
            Self::ActivateCredential => "ActivateCredential",
            Self::Import => "Import",
            Self::Load => "Load",
            Self::EvictOld => "EvictControl (remove old identity key)",
            Self::Persist => "EvictControl (persist identity key)",
        })
    }
}

/// A TPM failure. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is not one of `device[:PATH]`, `mssim[:…]`, `swtpm[:…]`, `tabrmd[:…]`.
    #[error(
        "invalid TCTI {tcti:?} (use device:/dev/tpmrm0, tabrmd, swtpm:host=H,port=P or mssim:host=H,port=P)"
    )]
    InvalidTcti {
        /// The TCTI given.
        tcti: String,
    },
    /// The TCTI could not be opened or ESAPI could not be initialised.
    #[error("cannot connect to the TPM through {tcti:?}: {source}")]
    Connect {
        /// The TCTI given.
        tcti: String,
        /// The TSS error.
        source: EsysError,
    },
    /// Reading, creating or persisting a primary key failed.
    #[error("cannot provide the {which} at 0x{handle:08x}: {source}")]
    PrimaryKey {
        /// `EK` or `SRK`.
        which: &'static str,
        /// Its persistent handle.
        handle: u32,
        /// The TSS error.
        source: EsysError,
    },
    /// The TPM returned a public area kdps cannot use or marshal faithfully.
    #[error("the TPM's {which} public area is unusable: {source}")]
    BadPublic {
        /// Which key.
        which: &'static str,
        /// Why.
        source: TpmWireError,
    },
    /// Our marshalling of a public area does not hash to the Name the TPM reports.
    #[error("marshalled {which} public area does not match the TPM's Name")]
    NameMismatch {
        /// Which key.
        which: &'static str,
    },
    /// The activation blob is malformed.
    #[error("activation blob is malformed: {0}")]
    InvalidBlob(#[from] TpmWireError),
    /// The activation blob parts do not fit the TSS structures.
    #[error("activation blob item {item} does not fit the TPM structure: {source}")]
    BlobItem {
        /// Item name.
        item: &'static str,
        /// The TSS error.
        source: EsysError,
    },
    /// A step of the activation failed (a blob for another TPM fails at ActivateCredential).
    #[error("importing the activation blob failed at {step}: {source}")]
    Import {
        /// The failing step.
        step: ImportStep,
        /// The TSS error.
        source: EsysError,
    },
    /// No identity key is persisted at `0x81000100`.
    #[error(
        "no identity key at 0x{:08x}; import an activation blob first",
        handle::ID_KEY
    )]
    NoIdentityKey,
    /// Data is longer than one `TPM2_HMAC` can take (tss-esapi 7.7 has no HMAC sequence API).
    #[error("cannot HMAC {len} bytes in the TPM: at most {max} bytes are supported")]
    DataTooLong {
        /// Data length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// Another TPM command failed.
    #[error("TPM command {command} failed: {source}")]
    Command {
        /// What we were doing.
        command: &'static str,
        /// The TSS error.
        source: EsysError,
    },
    /// The system clock is before 1970.
    #[error("system clock is before the Unix epoch")]
    Clock,
}

/// A TPM opened through a TCTI. Not shareable between threads at the same time (the TPM
/// serialises commands); open one per device.
pub struct Tpm {
    tcti: String,
    ctx: Context,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

fn is_retry(e: &EsysError) -> bool {
    matches!(
        e,
        EsysError::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(Tss2ResponseCodeKind::Retry | Tss2ResponseCodeKind::Yielded | Tss2ResponseCodeKind::Testing)
        )
    )
}

fn persistent(h: u32) -> Result<PersistentTpmHandle, TpmError> {
    PersistentTpmHandle::new(h).map_err(|source| TpmError::Command {
        command: "persistent handle",
        source,
    })
}

/// The EK template (TCG default, RSA-2048, unique = 256 zero bytes) and the SRK template
/// (dps-protocol §4.3), from the same definitions the service parses.
fn template(which: &'static str) -> Result<tss_esapi::structures::Public, TpmError> {
    let (attributes, policy, unique): (u32, &[u8], Vec<u8>) = match which {
        "EK" => (attr::EK, &EK_AUTH_POLICY_SHA256, vec![0; 256]),
        _ => (attr::SRK, &[], Vec::new()),
    };
    let area = wire::Public::new(
        alg::SHA256,
        attributes,
        policy,
        PublicParameters::Rsa {
            symmetric: SymmetricDefinition::AES_128_CFB,
            scheme: Scheme::NULL,
            key_bits: 2048,
            exponent: 0,
            modulus: unique,
        },
    )
    .map_err(|source| TpmError::BadPublic { which, source })?;
    tss_esapi::structures::Public::unmarshall(area.public_area()).map_err(|source| {
        TpmError::Command {
            command: "unmarshal template",
            source,
        }
    })
}

/// Marshals a public area to `TPM2B_PUBLIC` and checks it with the strict parser.
fn export_public(
    which: &'static str,
    public: &tss_esapi::structures::Public,
    tpm_name: &[u8],
) -> Result<Vec<u8>, TpmError> {
    let area = public.marshall().map_err(|source| TpmError::Command {
        command: "marshal public area",
        source,
    })?;
    let parsed = wire::Public::from_public_area(&area)
        .map_err(|source| TpmError::BadPublic { which, source })?;
    // The TPM's Name is over its own marshalling; equal Names prove ours is byte-identical.
    if parsed.name() != tpm_name {
        return Err(TpmError::NameMismatch { which });
    }
    Ok(parsed.to_tpm2b())
}

impl Tpm {
    /// Opens the TPM behind `tcti`, e.g. `device:/dev/tpmrm0`, `tabrmd`,
    /// `swtpm:host=127.0.0.1,port=2321` (port+1 is the control port) or `mssim:…`.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|_| TpmError::InvalidTcti {
            tcti: tcti.to_owned(),
        })?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        })?;
        Ok(Tpm {
            tcti: tcti.to_owned(),
            ctx,
        })
    }

    /// Runs `f`, resending while the TPM answers TPM_RC_RETRY (or YIELDED / TESTING).
    fn retry<T>(
        &mut self,
        mut f: impl FnMut(&mut Context) -> Result<T, EsysError>,
    ) -> Result<T, EsysError> {
        let mut attempt = 0;
        loop {
            match f(&mut self.ctx) {
                Err(e) if is_retry(&e) && attempt < MAX_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 << attempt));
                }
                other => return other,
            }
        }
    }

    /// Runs `f` with one password (empty auth) session.
    fn with_password<T>(
        &mut self,
        mut f: impl FnMut(&mut Context) -> Result<T, EsysError>,
    ) -> Result<T, EsysError> {
        self.retry(|ctx| ctx.execute_with_session(Some(AuthSession::Password), &mut f))
    }

    /// Persistent handles currently defined in the TPM.
    fn persistent_handles(&mut self) -> Result<Vec<u32>, TpmError> {
        let mut found = Vec::new();
        let mut next = 0x8100_0000u32;
        loop {
            let (data, more) = self
                .retry(|ctx| {
                    ctx.execute_without_session(|ctx| {
                        ctx.get_capability(CapabilityType::Handles, next, 64)
                    })
                })
                .map_err(|source| TpmError::Command {
                    command: "GetCapability(handles)",
                    source,
                })?;
            let CapabilityData::Handles(list) = data else {
                break;
            };
            let handles: Vec<u32> = list.iter().map(|h| u32::from(*h)).collect();
            let last = handles.last().copied();
            found.extend(handles.into_iter().filter(|h| *h >= 0x8100_0000));
            match last {
                Some(last) if more && last < u32::MAX => next = last + 1,
                _ => break,
            }
        }
        Ok(found)
    }

    fn is_persisted(&mut self, h: u32) -> Result<bool, TpmError> {
        Ok(self.persistent_handles()?.contains(&h))
    }

    /// An ESYS handle for a persistent object; close it with [`Tpm::close`].
    fn open_persistent(&mut self, h: u32) -> Result<ObjectHandle, EsysError> {
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(h)?);
        self.retry(|ctx| ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle)))
    }

    /// Releases an ESYS handle of a persistent object (the object stays in the TPM).
    fn close(&mut self, mut object: ObjectHandle) {
        if let Err(e) = self.ctx.tr_close(&mut object) {
            tracing::debug!(error = %e, "closing ESYS handle failed");
        }
    }

    /// Flushes a transient object or session from the TPM (needed without a resource manager).
    fn flush(&mut self, object: ObjectHandle) {
        if let Err(e) = self.ctx.flush_context(object) {
            tracing::warn!(error = %e, "flushing a TPM object failed");
        }
    }

    /// Reads the public area of a persistent key as `TPM2B_PUBLIC` bytes.
    fn read_persistent_public(&mut self, which: &'static str, h: u32) -> Result<Vec<u8>, TpmError> {
        let object = self
            .open_persistent(h)
            .map_err(|source| TpmError::PrimaryKey {
                which,
                handle: h,
                source,
            })?;
        let read = self.retry(|ctx| {
            ctx.execute_without_session(|ctx| ctx.read_public(KeyHandle::from(object)))
        });
        self.close(object);
        let (public, name, _) = read.map_err(|source| TpmError::PrimaryKey {
            which,
            handle: h,
            source,
        })?;
        export_public(which, &public, name.value())
    }

    /// Returns the persistent primary key at `h`, creating it from `template(which)` under
    /// `hierarchy` and persisting it first if the handle is empty.
    fn primary(
        &mut self,
        which: &'static str,
        h: u32,
        hierarchy: Hierarchy,
    ) -> Result<Vec<u8>, TpmError> {
        if !self.is_persisted(h)? {
            let public = template(which)?;
            let err = |source| TpmError::PrimaryKey {
                which,
                handle: h,
                source,
            };
            let created = self
                .with_password(|ctx| {
                    ctx.create_primary(hierarchy, public.clone(), None, None, None, None)
                })
                .map_err(err)?;
            let transient = ObjectHandle::from(created.key_handle);
            let persisted = persistent(h).and_then(|p| {
                self.with_password(|ctx| {
                    ctx.evict_control(Provision::Owner, transient, Persistent::Persistent(p))
                })
                .map_err(err)
            });
            self.flush(transient);
            let persisted = persisted?;
            self.close(persisted);
            tracing::info!(
                key = which,
                handle = format_args!("0x{h:08x}"),
                "created and persisted TPM primary key"
            );
        }
        self.read_persistent_public(which, h)
    }

    /// The EK as marshalled `TPM2B_PUBLIC` (what DPS expects base64-encoded in
    /// `tpm.endorsementKey`). Uses the EK persisted at `0x81010001`; if there is none, creates
    /// it from the TCG default RSA-2048 template (as `tpm2_createek -G rsa` does) and persists it.
    pub fn endorsement_key(&mut self) -> Result<Vec<u8>, TpmError> {
        self.primary("EK", handle::EK, Hierarchy::Endorsement)
    }

    /// The SRK as marshalled `TPM2B_PUBLIC` (`tpm.storageRootKey`). Uses the key persisted at
    /// `0x81000001`, else creates it (RSA-2048, AES-128-CFB, noDA, userWithAuth) and persists it.
    pub fn storage_root_key(&mut self) -> Result<Vec<u8>, TpmError> {
        self.primary("SRK", handle::SRK, Hierarchy::Owner)
    }

    /// The DPS registration ID of this TPM (base32 of SHA-256 of the EK, §4.1).
    pub fn registration_id(&mut self) -> Result<String, TpmError> {
        Ok(wire::registration_id_from_ek(&self.endorsement_key()?))
    }

    /// Imports a DPS activation blob: ActivateCredential with the EK (under a
    /// PolicySecret(endorsement) session) recovers the inner wrapper key, Import and Load
    /// bring in the identity key under the SRK, and EvictControl persists it at `0x81000100`
    /// (replacing the previous one). All transient objects and sessions are flushed.
    pub fn import_activation(&mut self, blob: &[u8]) -> Result<(), TpmError> {
        let blob = ActivationBlob::decode(blob)?;
        let item = |item: &'static str| move |source| TpmError::BlobItem { item, source };
        let id_object =
            IdObject::try_from(blob.credential_blob.clone()).map_err(item("1 (ID object)"))?;
        let secret = EncryptedSecret::try_from(blob.encrypted_secret.clone())
            .map_err(item("2 (encrypted secret)"))?;
        let duplicate = Private::try_from(blob.duplicate.clone()).map_err(item("3 (private)"))?;
        let sym_seed =
            EncryptedSecret::try_from(blob.sym_seed.clone()).map_err(item("4 (symmetric seed)"))?;
        let id_public = tss_esapi::structures::Public::unmarshall(blob.public.public_area())
            .map_err(item("5 (public)"))?;
        // tss2-mu can accept a corrupt public area and change it (dps-protocol §4.5).
        if id_public.marshall().ok().as_deref() != Some(blob.public.public_area()) {
            return Err(TpmError::InvalidBlob(TpmWireError::NotCanonical));
        }

        // The EK and SRK must exist; creating them here gives the same keys the blob was
        // built for, if it was built for this TPM.
        self.endorsement_key()?;
        self.storage_root_key()?;
        let ek = self
            .open_persistent(handle::EK)
            .map_err(|source| TpmError::PrimaryKey {
                which: "EK",
                handle: handle::EK,
                source,
            })?;
        let srk = match self.open_persistent(handle::SRK) {
            Ok(h) => h,
            Err(source) => {
                self.close(ek);
                return Err(TpmError::PrimaryKey {
                    which: "SRK",
                    handle: handle::SRK,
                    source,
                });
            }
        };
        let result =
            self.activate_and_import(ek, srk, id_object, secret, duplicate, sym_seed, id_public);
        self.close(ek);
        self.close(srk);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn activate_and_import(
        &mut self,
        ek: ObjectHandle,
        srk: ObjectHandle,
        id_object: IdObject,
        secret: EncryptedSecret,
        duplicate: Private,
        sym_seed: EncryptedSecret,
        id_public: tss_esapi::structures::Public,
    ) -> Result<(), TpmError> {
        let fail = |step| move |source| TpmError::Import { step, source };

        // ActivateCredential under a policy session satisfying the EK's PolicySecret(endorsement).
        let session = self
            .retry(|ctx| {
                ctx.execute_without_session(|ctx| {
                    ctx.start_auth_session(
                        None,
                        None,
                        None,
                        SessionType::Policy,
                        EsysSymmetricDefinition::Null,
                        HashingAlgorithm::Sha256,
                    )
                })
            })
            .map_err(fail(ImportStep::StartPolicySession))?
            .ok_or(TpmError::Import {
                step: ImportStep::StartPolicySession,
                source: EsysError::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
            })?;
        let session_object = ObjectHandle::from(tss_esapi::handles::SessionHandle::from(session));
        let inner_key = (|| {
            let policy =
                PolicySession::try_from(session).map_err(fail(ImportStep::PolicySecret))?;
            self.with_password(|ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Nonce::default(),
                    Digest::default(),
                    Nonce::default(),
                    None,
                )
            })
            .map_err(fail(ImportStep::PolicySecret))?;
            self.retry(|ctx| {
                ctx.execute_with_sessions(
                    (Some(AuthSession::Password), Some(session), None),
                    |ctx| {
                        ctx.activate_credential(
                            KeyHandle::from(srk),
                            KeyHandle::from(ek),
                            id_object.clone(),
                            secret.clone(),
                        )
                    },
                )
            })
            .map_err(fail(ImportStep::ActivateCredential))
        })();
        self.flush(session_object);
        let inner_key = inner_key?;

        // Import the duplicated identity key under the SRK with the inner wrapper key.
        let encryption_key =
            Data::try_from(inner_key.value().to_vec()).map_err(fail(ImportStep::Import))?;
        let private = self
            .with_password(|ctx| {
                ctx.import(
                    srk,
                    Some(encryption_key.clone()),
                    id_public.clone(),
                    duplicate.clone(),
                    sym_seed.clone(),
                    SymmetricDefinitionObject::AES_128_CFB,
                )
            })
            .map_err(fail(ImportStep::Import))?;
        let loaded = self
            .with_password(|ctx| ctx.load(KeyHandle::from(srk), private.clone(), id_public.clone()))
            .map_err(fail(ImportStep::Load))?;
        let loaded = ObjectHandle::from(loaded);
        let persisted = self.replace_identity_key(loaded);
        self.flush(loaded);
        persisted
    }

    /// Drops any identity key at `0x81000100` and persists `loaded` there.
    fn replace_identity_key(&mut self, loaded: ObjectHandle) -> Result<(), TpmError> {
        let fail = |step| move |source| TpmError::Import { step, source };
        let target = persistent(handle::ID_KEY)?;
        if self.is_persisted(handle::ID_KEY)? {
            let old = self
                .open_persistent(handle::ID_KEY)
                .map_err(fail(ImportStep::EvictOld))?;
            let evicted = self.with_password(|ctx| {
                ctx.evict_control(Provision::Owner, old, Persistent::Persistent(target))
            });
            // ESAPI 3.2 keeps the ESYS_TR of an evicted persistent object (tss-esapi marks it
            // closed without closing it); a stale entry makes the next TR_FromTPMPublic of the
            // handle fail with "Name mismatch", so close it in every case.
            self.close(old);
            evicted.map_err(fail(ImportStep::EvictOld))?;
        }
        let new = self
            .with_password(|ctx| {
                ctx.evict_control(Provision::Owner, loaded, Persistent::Persistent(target))
            })
            .map_err(fail(ImportStep::Persist))?;
        self.close(new);
        Ok(())
    }

    /// HMAC-SHA-256 of `data` with the identity key at `0x81000100`, computed by the TPM.
    pub fn hmac(&mut self, data: &[u8]) -> Result<[u8; 32], TpmError> {
        let max = self
            .ctx
            .get_tpm_property(PropertyTag::InputBuffer)
            .ok()
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .map_or(MAX_HMAC_INPUT, |v| v.min(MAX_HMAC_INPUT));
        if data.len() > max {
            return Err(TpmError::DataTooLong {
                len: data.len(),
                max,
            });
        }
        let buffer = MaxBuffer::try_from(data.to_vec()).map_err(|_| TpmError::DataTooLong {
            len: data.len(),
            max,
        })?;
        if !self.is_persisted(handle::ID_KEY)? {
            return Err(TpmError::NoIdentityKey);
        }
        let key = self
            .open_persistent(handle::ID_KEY)
            .map_err(|source| TpmError::Command {
                command: "open identity key",
                source,
            })?;
        let digest =
            self.with_password(|ctx| ctx.hmac(key, buffer.clone(), HashingAlgorithm::Sha256));
        self.close(key);
        let digest = digest.map_err(|source| TpmError::Command {
            command: "HMAC",
            source,
        })?;
        <[u8; 32]>::try_from(digest.value()).map_err(|_| TpmError::Command {
            command: "HMAC",
            source: EsysError::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        })
    }

    /// A DPS registration SAS token signed by the TPM (dps-protocol §4.1 step 4):
    /// `sr` = URL-encoded `{idScope}/registrations/{registrationId}`, `se` = now + `ttl`,
    /// `skn=registration`, signature = TPM2_HMAC(identity key, sr "\n" se).
    pub fn registration_token(
        &mut self,
        id_scope: &str,
        registration_id: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TpmError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TpmError::Clock)?;
        let se = now.as_secs().saturating_add(ttl.as_secs());
        let sr = sas::encode_sr(id_scope, registration_id, sas::SrEncoding::UrlEncodedUpper);
        let signature = self.hmac(sas::string_to_sign(&sr, se).as_bytes())?;
        Ok(sas::format_token(
            &sr,
            &signature,
            se,
            Some(sas::REGISTRATION_KEY_NAME),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_tcti_strings_are_rejected_before_connecting() {
        for tcti in ["", "tcp:127.0.0.1", "swtpm:port=notanumber"] {
            assert!(
                matches!(Tpm::open(tcti), Err(TpmError::InvalidTcti { .. })),
                "{tcti}"
            );
        }
    }

    #[test]
    fn unreachable_swtpm_is_a_connect_error() {
        // Port 1 on loopback: nothing listens there.
        let err = Tpm::open("swtpm:host=127.0.0.1,port=1").unwrap_err();
        assert!(matches!(err, TpmError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("cannot connect"));
    }

    #[test]
    fn templates_have_the_protocol_shape() {
        let ek = template("EK").unwrap();
        let bytes = ek.marshall().unwrap();
        let p = wire::Public::from_public_area(&bytes).unwrap();
        assert_eq!(p.attributes(), attr::EK);
        assert_eq!(p.rsa_modulus().unwrap(), &[0u8; 256][..]);
        assert_eq!(p.to_tpm2b().len(), 0x013a + 2);
        let srk = template("SRK").unwrap();
        let p = wire::Public::from_public_area(&srk.marshall().unwrap()).unwrap();
        assert_eq!(p.attributes(), attr::SRK);
        assert!(p.auth_policy().is_empty());
        assert!(p.rsa_modulus().unwrap().is_empty());
    }

    #[test]
    fn tpm_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Tpm>();
    }
}
