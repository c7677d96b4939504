//! Standalone server + `kdps-device` CLI, `custom` allocation: a real HTTPS webhook (hyper +
//! rustls, its own CA) that the service calls with a DPS `AllocationRequest`. Success (hub,
//! initial twin and payload reach the device), re-provisioning (the webhook sees the current
//! hub), a webhook that fails, is down, is not trusted, or picks a hub outside the
//! enrollment's list.
#![allow(clippy::unwrap_used)]

use kdps_tests::Standalone;
use kdps_tests::pki::indent;
use kdps_tests::webhook::Webhook;
use serde_json::json;

const SCOPE: &str = "0ne00000A11";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// hub-a and hub-b are the group's hubs; hub-c is linked to the service but not the group's.
fn manifests(webhook_url: &str, ca_pem: &str) -> String {
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 1000}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: iot}}
spec: {{hostName: hub-a.example.com, deviceNamespace: hub-a}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-b, namespace: iot}}
spec: {{hostName: hub-b.example.com, deviceNamespace: hub-b}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-c, namespace: iot}}
spec: {{hostName: hub-c.example.com, deviceNamespace: hub-c}}
---
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: custom-fleet, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
  allocationPolicy: custom
  iotHubs: [hub-a, hub-b]
  initialTwin: {{tags: {{from: enrollment}}}}
  customAllocation:
    webhookUrl: "{webhook_url}"
    timeoutSeconds: 5
    caBundle: |
{}"#,
        indent(ca_pem, 6)
    )
}

/// The webhook's logic: the hub the device asks for in its payload (`{"hub": ...}`), or
/// status 400 when the payload says `{"fail": true}`.
fn allocate(request: &serde_json::Value) -> (u16, serde_json::Value) {
    let payload = &request["deviceRuntimeContext"]["payload"];
    if payload["fail"] == true {
        return (400, json!({"message": "this device is not welcome"}));
    }
    let hub = payload["hub"].as_str().unwrap_or("hub-a.example.com");
    (
        200,
        json!({
            "iotHubHostName": hub,
            "initialTwin": {"tags": {"from": "webhook"}, "properties": {"desired": {"mode": "custom"}}},
            "payload": {"greeting": "hello", "chosen": hub},
        }),
    )
}

fn register_with(svc: &Standalone, id: &str, payload: serde_json::Value) -> kdps_tests::DeviceRun {
    svc.register(
        SCOPE,
        id,
        &["--group-key", GROUP_KEY, "--payload", &payload.to_string()],
    )
}

#[test]
fn webhook_chooses_the_hub_twin_and_payload() {
    let hook = Webhook::start(allocate);
    let svc = Standalone::start(&manifests(&hook.url(), hook.ca_pem()));

    let out = register_with(&svc, "custom-01", json!({"hub": "hub-b.example.com"})).json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["assignedHub"], "hub-b.example.com");
    assert_eq!(out["substatus"], "initialAssignment");
    assert_eq!(
        out["payload"],
        json!({"greeting": "hello", "chosen": "hub-b.example.com"})
    );

    // What the webhook was told: the DPS AllocationRequest, without key material.
    let requests = hook.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    let ctx = &req["deviceRuntimeContext"];
    assert_eq!(ctx["registrationId"], "custom-01");
    assert_eq!(ctx["payload"], json!({"hub": "hub-b.example.com"}));
    assert_eq!(ctx["symmetricKey"], json!({}));
    assert!(ctx.get("currentIotHubHostName").is_none());
    assert_eq!(
        req["linkedHubs"],
        json!(["hub-a.example.com", "hub-b.example.com"]),
        "only the enrollment's hubs"
    );
    assert!(req["enrollmentGroup"].is_object(), "{req}");
    let text = req.to_string();
    assert!(!text.contains(GROUP_KEY), "the webhook must not see keys");

    // The webhook's initial twin replaces the enrollment's.
    let devices = svc.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["namespace"], "hub-b");
    assert_eq!(devices[0]["twin"]["tags"]["from"], "webhook");
    assert_eq!(devices[0]["twin"]["desired"]["mode"], "custom");

    // Re-provisioning: the webhook sees the current assignment and may move the device.
    let out = register_with(&svc, "custom-01", json!({"hub": "hub-a.example.com"})).json();
    assert_eq!(out["assignedHub"], "hub-a.example.com");
    assert_eq!(out["substatus"], "deviceDataMigrated");
    let requests = hook.requests();
    let ctx = &requests[1]["deviceRuntimeContext"];
    assert_eq!(ctx["currentIotHubHostName"], "hub-b.example.com");
    assert_eq!(ctx["currentDeviceId"], "custom-01");
    assert_eq!(svc.registrations().len(), 1);
    let enabled: Vec<_> = svc
        .devices()
        .into_iter()
        .filter(|d| d["enabled"] == true)
        .collect();
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0]["namespace"], "hub-a");
}

#[test]
fn webhook_choosing_a_hub_outside_the_list_is_refused() {
    let hook = Webhook::start(allocate);
    let svc = Standalone::start(&manifests(&hook.url(), hook.ca_pem()));
    // Not linked at all.
    register_with(&svc, "custom-02", json!({"hub": "rogue.example.com"})).assert_error(
        5,
        "'rogue.example.com', which is not one of the linked hubs",
    );
    // Linked to the service, but not one of this enrollment's hubs.
    let run = register_with(&svc, "custom-02", json!({"hub": "hub-c.example.com"}));
    run.assert_error(
        5,
        "'hub-c.example.com', which is not one of the linked hubs",
    );
    assert!(run.stderr.contains("400208"), "{}", run.stderr);
    assert_eq!(hook.requests().len(), 2);
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
}

#[test]
fn webhook_failure_is_reported_with_its_status() {
    let hook = Webhook::start(allocate);
    let svc = Standalone::start(&manifests(&hook.url(), hook.ca_pem()));
    let run = register_with(&svc, "custom-03", json!({"fail": true}));
    run.assert_error(5, "Custom allocation failed with status code: 400");
    assert!(run.stderr.contains("400207"), "{}", run.stderr);
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
}

#[test]
fn webhook_down_or_untrusted_fails_clearly_and_writes_nothing() {
    let hook = Webhook::start(allocate);
    let url = hook.url();
    let ca = hook.ca_pem().to_owned();
    let svc = Standalone::start(&manifests(&url, &ca));
    // A device registered while the webhook was up keeps its record when it is down.
    register_with(&svc, "custom-04", json!({})).json();
    drop(hook);

    let run = register_with(&svc, "custom-05", json!({}));
    run.assert_error(5, "Custom allocation failed");
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(run.stderr.contains("400207"), "{}", run.stderr);
    // Re-registering an assigned device fails the same way and keeps its assignment.
    register_with(&svc, "custom-04", json!({})).assert_error(5, "Custom allocation failed");
    let regs = svc.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["registrationId"], "custom-04");
    assert_eq!(regs[0]["status"], "assigned");
    assert_eq!(svc.devices().len(), 1);

    // A webhook whose certificate is not signed by the configured caBundle: not trusted.
    let other = Webhook::start(allocate);
    let wrong_ca = Webhook::start(allocate);
    svc.write_manifest("service.yaml", &manifests(&other.url(), wrong_ca.ca_pem()));
    let run = register_with(&svc, "custom-06", json!({}));
    run.assert_error(5, "Custom allocation failed");
    assert!(other.requests().is_empty(), "no request without TLS trust");
    assert_eq!(svc.registrations().len(), 1);
}
