//! kdps-device's TPM code against a real software TPM (swtpm), one fresh TPM per test.
//! Needs swtpm and tpm2-tools: run scripts/install-test-deps.sh. Missing tools fail the tests.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used)]

mod support {
    pub mod swtpm;
}

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kdps_device::tpm::{ImportStep, Tpm, TpmError};
use kdps_proto::sas::SasToken;
use kdps_proto::tpm::{
    ActivationBlob, IdentityKey, Public, build_activation, build_activation_with_data, handle,
    new_challenge, registration_id_from_ek,
};
use support::swtpm::Swtpm;

/// HMAC-SHA-256 in software, as the service computes it.
fn software_hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    IdentityKey::from_bytes(key).unwrap().hmac_sha256(data)
}

/// EK and SRK exported by kdps-device from `tpm`, as `Public`.
fn keys(tpm: &mut Tpm) -> (Public, Public) {
    let ek = Public::from_tpm2b(&tpm.endorsement_key().unwrap()).unwrap();
    let srk = Public::from_tpm2b(&tpm.storage_root_key().unwrap()).unwrap();
    (ek, srk)
}

fn read_file(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn ek_export_is_byte_identical_to_tpm2_createek_and_names_match_tpm2_readpublic() {
    let swtpm = Swtpm::start();
    let (ek, srk) = {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ek = tpm.endorsement_key().unwrap();
        let srk = tpm.storage_root_key().unwrap();
        // A second call reuses the persisted keys.
        assert_eq!(tpm.endorsement_key().unwrap(), ek);
        assert_eq!(tpm.storage_root_key().unwrap(), srk);
        (ek, srk)
    }; // context dropped: swtpm serves one client at a time

    // RSA-2048 EK blobs start "AToAAQAL" in base64 (size 0x013A).
    assert_eq!(&ek[..6], &[0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b]);

    let dir = swtpm.scratch();
    let createek = dir.join("createek.pub");
    let ctx = dir.join("ek.ctx");
    swtpm.tpm2(
        "tpm2_createek",
        &[
            "-G",
            "rsa",
            "-u",
            createek.to_str().unwrap(),
            "-c",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(
        read_file(&createek),
        ek,
        "EK export differs from tpm2_createek -G rsa -u"
    );

    for (which, handle, exported) in [("EK", handle::EK, &ek), ("SRK", handle::SRK, &srk)] {
        let name_file = dir.join(format!("{which}.name"));
        let pub_file = dir.join(format!("{which}.pub"));
        swtpm.tpm2(
            "tpm2_readpublic",
            &[
                "-c",
                &format!("0x{handle:08x}"),
                "-n",
                name_file.to_str().unwrap(),
                "-o",
                pub_file.to_str().unwrap(),
            ],
        );
        let parsed = Public::from_tpm2b(exported).unwrap();
        assert_eq!(
            parsed.name(),
            read_file(&name_file),
            "{which} Name differs from tpm2_readpublic -n"
        );
        assert_eq!(
            &read_file(&pub_file),
            exported,
            "{which} differs from tpm2_readpublic -o"
        );
        assert!(parsed.is_restricted_decrypt());
        assert_eq!(parsed.rsa_key_bits(), Some(2048));
    }

    // The SRK is the Azure C SDK's template (dps-protocol §4.5): same key as tpm2_createprimary.
    let primary_ctx = dir.join("srk.ctx");
    let primary_pub = dir.join("srk-primary.pub");
    swtpm.tpm2(
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-G",
            "rsa2048:null:aes128cfb",
            "-g",
            "sha256",
            "-a",
            "restricted|decrypt|fixedtpm|fixedparent|noda|userwithauth|sensitivedataorigin",
            "-c",
            primary_ctx.to_str().unwrap(),
        ],
    );
    swtpm.tpm2(
        "tpm2_readpublic",
        &[
            "-c",
            primary_ctx.to_str().unwrap(),
            "-o",
            primary_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(read_file(&primary_pub), srk);

    // The registration ID DPS derives from this EK.
    let id = registration_id_from_ek(&ek);
    assert_eq!(id.len(), 52);
}

#[test]
fn an_ek_persisted_by_tpm2_tools_is_used_as_is() {
    let swtpm = Swtpm::start();
    let dir = swtpm.scratch();
    let tools_ek = dir.join("ek.pub");
    swtpm.tpm2(
        "tpm2_createek",
        &[
            "-G",
            "rsa",
            "-u",
            tools_ek.to_str().unwrap(),
            "-c",
            "0x81010001",
        ],
    );
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    assert_eq!(tpm.endorsement_key().unwrap(), read_file(&tools_ek));
}

#[test]
fn challenge_round_trip_through_the_tpm() {
    let swtpm = Swtpm::start();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    assert!(matches!(tpm.hmac(b"x"), Err(TpmError::NoIdentityKey)));
    assert!(matches!(
        tpm.registration_token(
            "0ne00000A11",
            "r",
            Duration::from_secs(60),
            SystemTime::now()
        ),
        Err(TpmError::NoIdentityKey)
    ));
    let (ek, srk) = keys(&mut tpm);
    let mut rng = rand::thread_rng();
    let challenge = new_challenge(&ek, &srk, &mut rng).unwrap();
    tpm.import_activation(&challenge.blob).unwrap();

    // TPM2_HMAC with the imported key equals HMAC with the key the service kept.
    let scope = "0ne00000A11";
    let reg = registration_id_from_ek(&ek.to_tpm2b());
    let now = SystemTime::now();
    let token = tpm
        .registration_token(scope, &reg, Duration::from_secs(3600), now)
        .unwrap();
    assert!(token.contains("&skn=registration"), "{token}");
    assert!(token.contains("%2Fregistrations%2F"), "{token}");
    let parsed = SasToken::parse(&token).unwrap();
    assert!(parsed.verify_with_key(challenge.key.as_bytes()));
    assert!(parsed.names(scope, &reg));
    let unix = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(parsed.expiry(), unix + 3600);
    assert!(!parsed.verify_with_key(&[0; 32]));

    // Up to the input buffer (1024 on swtpm) in one TPM2_HMAC; longer is a clear error.
    let data = vec![0xa5u8; 1024];
    assert_eq!(tpm.hmac(&data).unwrap(), challenge.key.hmac_sha256(&data));
    assert!(matches!(
        tpm.hmac(&[0; 1025]),
        Err(TpmError::DataTooLong {
            len: 1025,
            max: 1024
        })
    ));

    // Nothing in the blob is single-use; a second (920-byte, real-size) blob replaces the key.
    tpm.import_activation(&challenge.blob).unwrap();
    let key2 = [0x42u8; 32];
    let blob2 = build_activation_with_data(&ek, &srk, &key2, &[0x11; 154], &mut rng).unwrap();
    assert_eq!(blob2.len(), 920);
    tpm.import_activation(&blob2).unwrap();
    assert_eq!(tpm.hmac(b"abc").unwrap(), software_hmac(&key2, b"abc"));

    // Many imports in one session: every transient object and session is flushed.
    for i in 0..6u8 {
        let blob = build_activation(&ek, &srk, &[i + 1; 32], &mut rng).unwrap();
        tpm.import_activation(&blob).unwrap();
        assert_eq!(tpm.hmac(b"x").unwrap(), software_hmac(&[i + 1; 32], b"x"));
    }

    // The identity key survives closing the context (persisted at 0x81000100).
    drop(tpm);
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    assert_eq!(tpm.hmac(b"x").unwrap(), software_hmac(&[6; 32], b"x"));
}

#[test]
fn a_blob_for_another_tpm_fails_at_activate_credential() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let mut tpm_a = Tpm::open(&a.tcti()).unwrap();
    let mut tpm_b = Tpm::open(&b.tcti()).unwrap();
    let (ek_a, srk_a) = keys(&mut tpm_a);
    let (ek_b, _) = keys(&mut tpm_b);
    assert_ne!(ek_a, ek_b, "two swtpm instances must have different EKs");
    let challenge = new_challenge(&ek_a, &srk_a, &mut rand::thread_rng()).unwrap();
    let err = tpm_b.import_activation(&challenge.blob).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::Import {
                step: ImportStep::ActivateCredential,
                ..
            }
        ),
        "{err}"
    );
    // B still works afterwards, and A imports its own blob.
    tpm_a.import_activation(&challenge.blob).unwrap();
    assert!(matches!(tpm_b.hmac(b"x"), Err(TpmError::NoIdentityKey)));
}

#[test]
fn tampered_blobs_are_rejected() {
    let swtpm = Swtpm::start();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let (ek, srk) = keys(&mut tpm);
    let key = [0x5au8; 32];
    let blob =
        build_activation_with_data(&ek, &srk, &key, b"uri", &mut rand::thread_rng()).unwrap();
    let parsed = ActivationBlob::decode(&blob).unwrap();
    // Offsets of each item's content.
    let mut starts = Vec::new();
    let mut at = 0;
    for len in [
        parsed.credential_blob.len(),
        parsed.encrypted_secret.len(),
        parsed.duplicate.len(),
        parsed.sym_seed.len(),
        parsed.public.public_area().len(),
    ] {
        starts.push((at + 2, len));
        at += 2 + len;
    }
    // A flip at the start, middle and end of the content of items 1 to 5 (and a size field).
    let mut positions = vec![0usize];
    for (start, len) in &starts {
        positions.extend([*start, start + len / 2, start + len - 1]);
    }
    for pos in positions {
        let mut bad = blob.clone();
        bad[pos] ^= 0x04;
        let err = tpm.import_activation(&bad);
        assert!(err.is_err(), "flip at byte {pos} was not detected");
    }
    // Truncation and trailing bytes are parse errors before the TPM is touched.
    assert!(matches!(
        tpm.import_activation(&blob[..blob.len() - 1]),
        Err(TpmError::InvalidBlob(_))
    ));
    let mut longer = blob.clone();
    longer.push(0);
    assert!(matches!(
        tpm.import_activation(&longer),
        Err(TpmError::InvalidBlob(_))
    ));
    // Item 6 has no integrity protection: a flip there still imports.
    let mut item6 = blob.clone();
    *item6.last_mut().unwrap() ^= 0x01;
    tpm.import_activation(&item6).unwrap();
    // After all the failures the TPM still imports (no leaked objects or sessions).
    tpm.import_activation(&blob).unwrap();
    assert_eq!(tpm.hmac(b"ok").unwrap(), software_hmac(&key, b"ok"));
}
