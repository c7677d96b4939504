//! TPM attestation end to end against a real software TPM (swtpm): the service builds the
//! challenge from the EK/SRK the device read out of its TPM, kdps-device imports it into the
//! TPM, and the service verifies the SAS token the TPM signed. Needs swtpm and tpm2-tools:
//! run scripts/install-test-deps.sh (missing tools fail these tests).
#![allow(clippy::unwrap_used)]

#[path = "../../device/tests/support/swtpm.rs"]
mod swtpm;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kdps_device::tpm::{ImportStep, Tpm, TpmError};
use kdps_proto::sas::SasToken;
use kdps_proto::tpm::registration_id_from_ek;
use kdps_registration::attestation::tpm::{
    TpmAttestationError, TpmChallenges, assignment_activation, parse_token,
};
use swtpm::Swtpm;

const SCOPE: &str = "0ne00000A11";
const SKEW: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

/// A device: its TPM and the base64 EK/SRK it puts in `tpm.endorsementKey/storageRootKey`.
struct Device {
    tpm: Tpm,
    ek: String,
    srk: String,
    registration_id: String,
}

fn device(swtpm: &Swtpm) -> Device {
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ek = tpm.endorsement_key().unwrap();
    let srk = tpm.storage_root_key().unwrap();
    Device {
        registration_id: registration_id_from_ek(&ek),
        ek: B64.encode(ek),
        srk: B64.encode(srk),
        tpm,
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn tpm_challenge_round_trip() {
    let swtpm = Swtpm::start();
    let mut dev = device(&swtpm);
    let store = TpmChallenges::default();
    let now = SystemTime::now();
    // Enrolled with the EK exactly as the device exports it.
    let enrolled = dev.ek.clone();

    // 1. No Authorization: the service answers with a challenge.
    let challenge = store
        .issue(
            &dev.registration_id,
            &enrolled,
            Some(&dev.ek),
            Some(&dev.srk),
            unix(now),
        )
        .unwrap();
    let body = serde_json::to_value(&challenge).unwrap();
    assert_eq!(body["keyName"], "registration");

    // 2. The device imports the blob into its TPM and signs a SAS with the imported key.
    let blob = B64
        .decode(body["authenticationKey"].as_str().unwrap())
        .unwrap();
    dev.tpm.import_activation(&blob).unwrap();
    let token = dev
        .tpm
        .registration_token(SCOPE, &dev.registration_id, TTL, now)
        .unwrap();

    // 3. The service verifies it (the poll repeats the same token: still valid).
    let token = parse_token(&token).unwrap();
    for _ in 0..2 {
        store
            .verify(
                SCOPE,
                &dev.registration_id,
                &enrolled,
                Some(&dev.ek),
                &token,
                unix(now),
                SKEW,
            )
            .unwrap();
    }

    // 4. On `assigned`, the second blob delivers the hub key into the same TPM.
    let assigned = assignment_activation(&dev.ek, &dev.srk).unwrap();
    dev.tpm
        .import_activation(&B64.decode(&assigned.authentication_key).unwrap())
        .unwrap();
    let hub_token = dev
        .tpm
        .registration_token(SCOPE, &dev.registration_id, TTL, now)
        .unwrap();
    let hub_token = SasToken::parse(&hub_token).unwrap();
    assert!(hub_token.verify_with_key(assigned.device_key.as_bytes()));
    // The challenge key was replaced: a token signed now no longer matches the challenge.
    assert!(matches!(
        store.verify(
            SCOPE,
            &dev.registration_id,
            &enrolled,
            None,
            &hub_token,
            unix(now),
            SKEW
        ),
        Err(TpmAttestationError::SignatureMismatch)
    ));
}

#[test]
fn an_expired_tpm_signed_token_is_rejected() {
    let swtpm = Swtpm::start();
    let mut dev = device(&swtpm);
    let store = TpmChallenges::default();
    let now = SystemTime::now();
    let challenge = store
        .issue(
            &dev.registration_id,
            &dev.ek,
            Some(&dev.ek),
            Some(&dev.srk),
            unix(now),
        )
        .unwrap();
    dev.tpm
        .import_activation(&B64.decode(&challenge.authentication_key).unwrap())
        .unwrap();
    // Signed two hours ago with a one-hour lifetime.
    let old = now - Duration::from_secs(7200);
    let token = dev
        .tpm
        .registration_token(SCOPE, &dev.registration_id, TTL, old)
        .unwrap();
    let err = store
        .verify(
            SCOPE,
            &dev.registration_id,
            &dev.ek,
            Some(&dev.ek),
            &parse_token(&token).unwrap(),
            unix(now),
            SKEW,
        )
        .unwrap_err();
    assert!(
        matches!(err, TpmAttestationError::TokenExpired { .. }),
        "{err}"
    );
    assert_eq!(err.dps_error_code(), 401002);
}

#[test]
fn another_tpm_cannot_answer_the_challenge() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let dev_a = device(&a);
    let mut dev_b = device(&b);
    let store = TpmChallenges::default();
    let now = unix(SystemTime::now());

    // B sends its own EK for A's enrollment: no challenge at all.
    let err = store
        .issue(
            &dev_a.registration_id,
            &dev_a.ek,
            Some(&dev_b.ek),
            Some(&dev_b.srk),
            now,
        )
        .unwrap_err();
    assert!(
        matches!(err, TpmAttestationError::EndorsementKeyMismatch),
        "{err}"
    );
    assert_eq!(err.dps_error_code(), 401002);
    assert!(store.is_empty());

    // B claims A's EK (public, so B can copy it) with its own SRK: it gets a challenge but its
    // TPM cannot open it, because only A's TPM holds the EK private key.
    let challenge = store
        .issue(
            &dev_a.registration_id,
            &dev_a.ek,
            Some(&dev_a.ek),
            Some(&dev_b.srk),
            now,
        )
        .unwrap();
    let err = dev_b
        .tpm
        .import_activation(&B64.decode(&challenge.authentication_key).unwrap())
        .unwrap_err();
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
    // Nor can it sign: it has no identity key; any key it makes up does not verify.
    assert!(matches!(dev_b.tpm.hmac(b"x"), Err(TpmError::NoIdentityKey)));
    let forged = kdps_proto::sas::generate_token(
        &[0u8; 32],
        &kdps_proto::sas::encode_sr(
            SCOPE,
            &dev_a.registration_id,
            kdps_proto::sas::SrEncoding::UrlEncodedUpper,
        ),
        now + 60,
        Some("registration"),
    );
    assert!(matches!(
        store.verify(
            SCOPE,
            &dev_a.registration_id,
            &dev_a.ek,
            Some(&dev_a.ek),
            &parse_token(&forged).unwrap(),
            now,
            SKEW
        ),
        Err(TpmAttestationError::SignatureMismatch)
    ));
}

#[test]
fn a_tampered_challenge_is_rejected_by_the_tpm() {
    let swtpm = Swtpm::start();
    let mut dev = device(&swtpm);
    let store = TpmChallenges::default();
    let now = unix(SystemTime::now());
    let challenge = store
        .issue(
            &dev.registration_id,
            &dev.ek,
            Some(&dev.ek),
            Some(&dev.srk),
            now,
        )
        .unwrap();
    let blob = B64.decode(&challenge.authentication_key).unwrap();
    // Item 1 integrity HMAC, item 2 secret, item 3 duplicate, item 4 seed, item 5 unique.
    for pos in [10, 100, 330, 500, blob.len() - 10] {
        let mut bad = blob.clone();
        bad[pos] ^= 0x80;
        assert!(
            dev.tpm.import_activation(&bad).is_err(),
            "flip at {pos} undetected"
        );
    }
    dev.tpm.import_activation(&blob).unwrap();
}
