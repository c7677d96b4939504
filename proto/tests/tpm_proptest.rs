//! Property tests: the TPM parsers return errors, never panic, on arbitrary or mutated input,
//! and whatever they accept re-encodes to exactly the bytes received.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use kdps_proto::tpm::{
    ActivationBlob, Public, PublicParameters, Scheme, SoftTpm, SymmetricDefinition, alg, attr,
    build_activation_with_data, registration_id_from_ek,
};
use proptest::prelude::*;

/// One real blob and the EK/SRK it was built for (RSA key generation is slow, so once).
fn fixture() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static F: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = rand::thread_rng();
        let tpm = SoftTpm::generate(&mut rng).unwrap();
        let blob = build_activation_with_data(
            tpm.endorsement_key(),
            tpm.storage_root_key(),
            &[7; 32],
            b"https://example/registrations/x",
            &mut rng,
        )
        .unwrap();
        (
            blob,
            tpm.endorsement_key().to_tpm2b(),
            tpm.storage_root_key().to_tpm2b(),
        )
    })
}

/// Applies (position, xor) edits and an optional truncation to `base`.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut v = base.to_vec();
    for (pos, x) in edits {
        if !v.is_empty() {
            let i = pos % v.len();
            v[i] ^= x;
        }
    }
    if let Some(cut) = cut {
        v.truncate(cut % (base.len() + 1));
    }
    v
}

fn small_hash() -> impl Strategy<Value = u16> {
    prop_oneof![Just(alg::SHA256), Just(alg::SHA384), Just(alg::SHA512)]
}

fn rsa_params() -> impl Strategy<Value = PublicParameters> {
    (
        prop_oneof![
            Just(SymmetricDefinition::NULL),
            Just(SymmetricDefinition::AES_128_CFB),
            (prop_oneof![Just(128u16), Just(256)]).prop_map(|bits| SymmetricDefinition {
                algorithm: alg::AES,
                key_bits: bits,
                mode: alg::CFB
            }),
        ],
        prop_oneof![
            Just(Scheme::NULL),
            Just(Scheme {
                scheme: alg::RSASSA,
                hash: Some(alg::SHA256),
                extra: None
            }),
            Just(Scheme {
                scheme: alg::RSAES,
                hash: None,
                extra: None
            }),
        ],
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..=512),
    )
        .prop_map(
            |(symmetric, scheme, key_bits, exponent, modulus)| PublicParameters::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            },
        )
}

fn keyed_hash_params() -> impl Strategy<Value = PublicParameters> {
    (
        prop_oneof![
            Just(Scheme::NULL),
            Just(Scheme::HMAC_SHA256),
            Just(Scheme {
                scheme: alg::XOR,
                hash: Some(alg::SHA256),
                extra: Some(alg::KDF1_SP800_108)
            }),
        ],
        proptest::collection::vec(any::<u8>(), 0..=64),
    )
        .prop_map(|(scheme, unique)| PublicParameters::KeyedHash { scheme, unique })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn public_from_tpm2b_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = Public::from_tpm2b(&bytes) {
            prop_assert_eq!(p.to_tpm2b(), bytes);
        }
    }

    #[test]
    fn public_area_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = Public::from_public_area(&bytes) {
            prop_assert_eq!(p.public_area(), &bytes[..]);
            let _ = p.name();
        }
    }

    #[test]
    fn blob_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(b) = ActivationBlob::decode(&bytes) {
            prop_assert_eq!(b.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn mutated_ek_is_rejected_or_canonical(
        edits in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (_, ek, srk) = fixture();
        for base in [ek, srk] {
            let bytes = mutate(base, &edits, cut);
            if let Ok(p) = Public::from_tpm2b(&bytes) {
                prop_assert_eq!(p.to_tpm2b(), bytes);
            }
        }
    }

    #[test]
    fn mutated_blob_is_rejected_or_canonical(
        edits in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (blob, _, _) = fixture();
        let bytes = mutate(blob, &edits, cut);
        if let Ok(b) = ActivationBlob::decode(&bytes) {
            prop_assert_eq!(b.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn built_publics_round_trip(
        name_alg in small_hash(),
        attributes in any::<u32>(),
        policy in proptest::collection::vec(any::<u8>(), 0..=64),
        params in prop_oneof![rsa_params(), keyed_hash_params()],
    ) {
        let p = Public::new(name_alg, attributes, &policy, params.clone()).unwrap();
        let q = Public::from_tpm2b(&p.to_tpm2b()).unwrap();
        prop_assert_eq!(q.parameters(), &params);
        prop_assert_eq!(q.attributes(), attributes);
        prop_assert_eq!(q.name(), p.name());
        prop_assert_eq!(q.is_restricted_decrypt(),
            attributes & (attr::RESTRICTED | attr::DECRYPT) == attr::RESTRICTED | attr::DECRYPT
                && attributes & attr::SIGN_ENCRYPT == 0);
    }

    #[test]
    fn registration_ids_are_52_lower_case_base32_chars(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let id = registration_id_from_ek(&bytes);
        prop_assert_eq!(id.len(), 52);
        prop_assert!(id.bytes().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)));
    }
}

#[test]
fn the_fixture_blob_decodes_to_the_protocol_sizes() {
    let (blob, _, _) = fixture();
    let b = ActivationBlob::decode(blob).unwrap();
    assert_eq!(
        (
            b.credential_blob.len(),
            b.encrypted_secret.len(),
            b.duplicate.len(),
            b.sym_seed.len(),
            b.public.public_area().len()
        ),
        (52, 256, 142, 256, 48)
    );
}
