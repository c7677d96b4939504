//! KDFa against an independent implementation: OpenSSL's SP 800-108 KBKDF (counter mode,
//! HMAC-SHA-256, 32-bit counter, label ‖ 0x00 ‖ context ‖ 32-bit L), which is exactly the
//! TPM's KDFa. Needs the `openssl` CLI (scripts/install-test-deps.sh installs it).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use kdps_proto::tpm::kdfa;

/// (key, label, context, output bytes)
type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], usize);

fn openssl_kbkdf(key: &[u8], label: &[u8], context: &[u8], bytes: usize) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(["kdf", "-keylen", &bytes.to_string()])
        .args(["-kdfopt", "digest:SHA256", "-kdfopt", "mac:HMAC"])
        .args(["-kdfopt", &format!("hexkey:{}", hex(key))])
        .args(["-kdfopt", &format!("hexsalt:{}", hex(label))]);
    if !context.is_empty() {
        cmd.args(["-kdfopt", &format!("hexinfo:{}", hex(context))]);
    }
    let out = cmd.arg("KBKDF").output().unwrap_or_else(|e| {
        panic!("cannot run the openssl CLI ({e}); run scripts/install-test-deps.sh")
    });
    assert!(
        out.status.success(),
        "openssl kdf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn kdfa_matches_openssl_kbkdf() {
    // A Name-shaped context (0x000B ‖ 32 bytes) as used for STORAGE keys, and the empty
    // context of INTEGRITY keys; 128 and 256 bits as in the activation blob, plus a
    // multi-block length.
    let name: Vec<u8> = [0x00, 0x0b].into_iter().chain(0u8..32).collect();
    let seed: Vec<u8> = (100u8..132).collect();
    let cases: [Case<'_>; 5] = [
        (&seed, b"STORAGE", &name, 16),
        (&seed, b"INTEGRITY", b"", 32),
        (&seed[..16], b"STORAGE", &name, 16),
        (b"k", b"IDENTITY", b"context", 80),
        (&seed, b"SECRET", &name, 32),
    ];
    for (key, label, context, bytes) in cases {
        let ours = kdfa(key, label, context, &[], u32::try_from(bytes * 8).unwrap()).unwrap();
        let judge = openssl_kbkdf(key, label, context, bytes);
        assert_eq!(ours, judge, "label {:?}", String::from_utf8_lossy(label));
        // contextU ‖ contextV are concatenated, so a split context gives the same key.
        let (u, v) = context.split_at(context.len() / 2);
        assert_eq!(
            kdfa(key, label, u, v, u32::try_from(bytes * 8).unwrap()).unwrap(),
            judge
        );
    }
}
