//! Wire formats that a kdps device and the kdps registration service must agree on.
//!
//! Nothing in this crate does I/O: it builds and parses bytes and strings.
//! - [`sas`]: DPS shared-access-signature tokens (dps-protocol §2).
//! - [`keys`]: per-device keys derived from enrollment-group keys.
//! - [`tpm`]: TPM 2.0 structures, KDFa and the DPS activation blob (§4).

pub mod keys;
pub mod sas;
pub mod tpm;

/// JSON ⇄ `google.protobuf.Value` conversions for DPS custom payloads.
pub mod grpc_convert;

/// The gRPC API (`proto/kdps/registration/...`), generated at build time.
pub mod registration {
    /// `kdps.registration.v1`: the device registration service.
    pub mod v1 {
        #![allow(
            missing_docs,
            clippy::doc_lazy_continuation,
            clippy::large_enum_variant
        )]
        tonic::include_proto!("kdps.registration.v1");

        /// Encoded `google.protobuf.FileDescriptorSet` of this package and its imports, for
        /// gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
            env!("OUT_DIR"),
            "/kdps_registration_v1_descriptor.bin"
        ));
    }
}
