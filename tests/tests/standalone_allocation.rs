//! Standalone server, allocation policies: a weighted `hashed` split over 1,000 devices
//! (in-process kdps-device clients, real TLS connections to the real service), `static`, and
//! `geoLatency` by the client address's region.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kdps_device::client::Credential;
use kdps_tests::Standalone;

const SCOPE: &str = "0ne00000A11";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn device_key(registration_id: &str) -> Vec<u8> {
    let group = kdps_proto::keys::decode_key(GROUP_KEY).unwrap();
    kdps_proto::keys::derive_device_key(&group, registration_id).to_vec()
}

/// Service + group key Secret + `links` (name, weight, region) + `extra` YAML documents.
fn manifests(service_spec: &str, links: &[(&str, u32, &str)], extra: &str) -> String {
    let mut y = format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 1000}}, {service_spec}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
"#
    );
    for (name, weight, region) in links {
        y.push_str(&format!(
            r#"---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: {name}, namespace: iot}}
spec: {{hostName: {name}.example.com, deviceNamespace: {name}, allocationWeight: {weight}, region: {region}}}
"#
        ));
    }
    y.push_str(extra);
    y
}

fn group(name: &str, spec_extra: &str) -> String {
    format!(
        r#"---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: {name}, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
  {spec_extra}
"#
    )
}

/// Registers `ids` in-process, 16 at a time; returns hub host name per device.
fn register_many(svc: &Standalone, ids: &[String]) -> Vec<String> {
    let opts = ids
        .iter()
        .map(|id| svc.options(SCOPE, id, Credential::SymmetricKey(device_key(id))))
        .collect();
    let results = kdps_tests::runtime().block_on(kdps_tests::register_all(opts, 16));
    results
        .into_iter()
        .zip(ids)
        .map(|(r, id)| match r {
            Ok(r) => {
                assert_eq!(r.status, "assigned");
                assert_eq!(&r.device_id, id);
                r.assigned_hub
            }
            Err(e) => panic!("{id}: {e}\n{}", svc.log()),
        })
        .collect()
}

fn counts(hubs: &[String]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for h in hubs {
        *c.entry(h.clone()).or_insert(0) += 1;
    }
    c
}

#[test]
fn hashed_split_over_1000_devices_follows_the_weights() {
    let links = [
        ("hub-a", 1, "west"),
        ("hub-b", 3, "west"),
        ("hub-c", 6, "west"),
    ];
    let svc = Standalone::start(&manifests(
        "allocationPolicy: hashed",
        &links,
        &group("fleet", ""),
    ));
    let ids: Vec<String> = (0..1000).map(|i| format!("fleet-device-{i:04}")).collect();
    let started = std::time::Instant::now();
    let hubs = register_many(&svc, &ids);
    let c = counts(&hubs);
    eprintln!("1000 registrations in {:?}: {c:?}", started.elapsed());
    let total_weight: u32 = links.iter().map(|l| l.1).sum();
    for (name, weight, _) in links {
        let share = *c.get(&format!("{name}.example.com")).unwrap_or(&0) as f64 / 10.0;
        let expected = f64::from(weight) * 100.0 / f64::from(total_weight);
        assert!(
            (share - expected).abs() <= 5.0,
            "{name}: {share:.1} % of devices, weight says {expected:.1} % (±5): {c:?}"
        );
    }
    // Every device is stored once, in its hub's namespace.
    let devices = svc.devices();
    assert_eq!(devices.len(), 1000);
    assert_eq!(svc.registrations().len(), 1000);
    let stored = counts(
        &devices
            .iter()
            .map(|d| d["hubHostName"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(stored, c);
    for d in &devices {
        let ns = d["namespace"].as_str().unwrap();
        assert_eq!(d["hubHostName"], format!("{ns}.example.com"));
    }

    // Hashing is deterministic: registering a sample again lands on the same hubs.
    let sample: Vec<String> = ids.iter().step_by(50).cloned().collect();
    let again = register_many(&svc, &sample);
    let before: Vec<String> = hubs.iter().step_by(50).cloned().collect();
    assert_eq!(again, before);
}

#[test]
fn static_allocation_uses_the_one_listed_hub_and_refuses_two() {
    let links = [("hub-a", 1, "west"), ("hub-b", 1000, "west")];
    let svc = Standalone::start(&manifests(
        "allocationPolicy: hashed",
        &links,
        &group("pinned", "allocationPolicy: static\n  iotHubs: [hub-a]"),
    ));
    let ids: Vec<String> = (0..20).map(|i| format!("pinned-{i:02}")).collect();
    let hubs = register_many(&svc, &ids);
    assert!(
        hubs.iter().all(|h| h == "hub-a.example.com"),
        "static must ignore hub-b's weight: {hubs:?}"
    );
    drop(svc);

    // static with two hubs cannot choose: the group is refused when the manifests load (the
    // log says why) and admits nobody.
    let svc = Standalone::start(&manifests(
        "allocationPolicy: hashed",
        &links,
        &group(
            "ambiguous",
            "allocationPolicy: static\n  iotHubs: [hub-a, hub-b]",
        ),
    ));
    assert!(
        svc.log()
            .contains("allocationPolicy static requires exactly one hub in iotHubs (2 listed)"),
        "{}",
        svc.log()
    );
    svc.register(SCOPE, "amb-01", &["--group-key", GROUP_KEY])
        .assert_error(3, "no enrollment admits this device");
    assert!(svc.registrations().is_empty());

    // The static hub stops taking devices (applyAllocationPolicy: false): no hub, code 400208.
    svc.write_manifest(
        "service.yaml",
        &(manifests("allocationPolicy: hashed", &[("hub-b", 1, "west")], "")
            + r#"---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {name: hub-a, namespace: iot}
spec: {hostName: hub-a.example.com, deviceNamespace: hub-a, applyAllocationPolicy: false}
"# + &group("pinned", "allocationPolicy: static\n  iotHubs: [hub-a]")),
    );
    svc.register(SCOPE, "pinned-99", &["--group-key", GROUP_KEY])
        .assert_error(5, "400208");
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
}

#[test]
fn geo_latency_assigns_the_hub_of_the_client_region() {
    // The device connects from 127.0.0.1. hub-far has a huge weight, so hashing alone would
    // put nearly every device there; the region map must win.
    let links = [("hub-near", 1, "west"), ("hub-far", 1000, "east")];
    let regions =
        r#"regions: [{name: west, cidrs: ["127.0.0.0/8"]}, {name: east, cidrs: ["10.0.0.0/8"]}]"#;
    let svc = Standalone::start(&manifests(
        &format!("allocationPolicy: geoLatency, {regions}"),
        &links,
        &group("fleet", ""),
    ));
    let ids: Vec<String> = (0..30).map(|i| format!("geo-{i:02}")).collect();
    let hubs = register_many(&svc, &ids);
    assert!(hubs.iter().all(|h| h == "hub-near.example.com"), "{hubs:?}");
    // Through the CLI too.
    let out = svc
        .register(SCOPE, "geo-cli", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(out["assignedHub"], "hub-near.example.com");

    // Move loopback to the east region: new devices go to hub-far.
    let swapped =
        r#"regions: [{name: east, cidrs: ["127.0.0.0/8"]}, {name: west, cidrs: ["10.0.0.0/8"]}]"#;
    svc.write_manifest(
        "service.yaml",
        &manifests(
            &format!("allocationPolicy: geoLatency, {swapped}"),
            &links,
            &group("fleet", ""),
        ),
    );
    let ids: Vec<String> = (0..10).map(|i| format!("geo-east-{i:02}")).collect();
    let hubs = register_many(&svc, &ids);
    assert!(hubs.iter().all(|h| h == "hub-far.example.com"), "{hubs:?}");
    // A device registered before the change is re-provisioned to its new region's hub.
    let out = svc
        .register(SCOPE, "geo-cli", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(out["assignedHub"], "hub-far.example.com");
    assert_eq!(out["substatus"], "deviceDataMigrated");

    // An address in no region falls back to weighted hashing over all links.
    svc.write_manifest(
        "service.yaml",
        &manifests(
            r#"allocationPolicy: geoLatency, regions: [{name: east, cidrs: ["10.0.0.0/8"]}]"#,
            &[("hub-near", 1000, "west"), ("hub-far", 1, "east")],
            &group("fleet", ""),
        ),
    );
    let ids: Vec<String> = (0..10).map(|i| format!("geo-none-{i:02}")).collect();
    let hubs = register_many(&svc, &ids);
    let near = hubs.iter().filter(|h| *h == "hub-near.example.com").count();
    assert!(near >= 9, "fallback must follow the weights: {hubs:?}");
}
