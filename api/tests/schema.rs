//! The generated CRDs: names, subresources, printer columns, descriptions, and CEL rules that
//! compile, are cost-bounded, and accept/reject what they should (evaluated client-side with
//! kube-cel, the CEL engine kube ships for this purpose).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kdps_api::{crds, validation};
use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::Value;

fn crd(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn schema(kind: &str) -> Value {
    serde_json::to_value(
        crd(kind).spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

const KINDS: [&str; 6] = [
    "ProvisioningService",
    "IoTHubLink",
    "IndividualEnrollment",
    "EnrollmentGroup",
    "DeviceRegistration",
    "Device",
];

#[test]
fn six_namespaced_kinds_in_kdps_io_v1alpha1() {
    let crds = crds();
    assert_eq!(
        crds.iter()
            .map(|c| c.spec.names.kind.as_str())
            .collect::<Vec<_>>(),
        KINDS
    );
    for c in &crds {
        let kind = &c.spec.names.kind;
        assert_eq!(c.spec.group, "kdps.io");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(
            c.metadata.name.as_deref(),
            Some(format!("{}.kdps.io", c.spec.names.plural).as_str())
        );
        assert_eq!(c.spec.versions.len(), 1);
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert_eq!(
            c.spec.names.categories.as_deref(),
            Some(&["kdps".to_owned()][..]),
            "{kind} must be in the kdps category"
        );
        assert!(
            c.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{kind} has no short name"
        );
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has no status subresource"
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.len() >= 4, "{kind}: {columns:?}");
        assert_eq!(columns.last(), Some(&"Age"), "{kind}");
        let status = &schema(kind)["properties"]["status"]["properties"];
        assert!(
            status["conditions"].is_object(),
            "{kind} has no status.conditions"
        );
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert!(status["observedGeneration"].is_object(), "{kind}");
    }
    // short names are unique across kinds
    let mut all: Vec<String> = crds
        .iter()
        .flat_map(|c| c.spec.names.short_names.clone().unwrap_or_default())
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
}

#[test]
fn printer_columns_show_the_essentials() {
    let columns = |kind: &str| -> BTreeMap<String, String> {
        crd(kind).spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.json_path))
            .collect()
    };
    let ready = ".status.conditions[?(@.type==\"Ready\")].status";
    let ps = columns("ProvisioningService");
    assert_eq!(ps["Ready"], ready);
    assert_eq!(ps["ID Scope"], ".status.idScope");
    assert_eq!(ps["Endpoint"], ".status.endpoint");
    let link = columns("IoTHubLink");
    assert_eq!(link["Host"], ".spec.hostName");
    assert_eq!(link["Weight"], ".spec.allocationWeight");
    assert_eq!(link["Ready"], ready);
    let ie = columns("IndividualEnrollment");
    assert_eq!(ie["Attestation"], ".status.attestationType");
    assert_eq!(ie["Status"], ".spec.provisioningStatus");
    assert_eq!(ie["Ready"], ready);
    let eg = columns("EnrollmentGroup");
    assert_eq!(eg["Attestation"], ".status.attestationType");
    assert_eq!(eg["Ready"], ready);
    let dr = columns("DeviceRegistration");
    assert_eq!(dr["Status"], ".spec.status");
    assert_eq!(dr["Assigned Hub"], ".spec.assignedHub");
    let dev = columns("Device");
    assert_eq!(dev["Hub"], ".spec.hub.hostName");
    assert_eq!(dev["Auth"], ".spec.authentication.type");
}

/// Walks every property below `spec` and `status` and returns the paths without a description.
fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let p = format!("{path}.{name}");
            let desc = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("");
            if desc.trim().is_empty() {
                out.push(p.clone());
            }
            undocumented(prop, &p, out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_has_a_description() {
    for kind in KINDS {
        let s = schema(kind);
        assert!(
            s["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{kind}"
        );
        let mut missing = Vec::new();
        undocumented(&s, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{kind}: fields without description: {missing:?}"
        );
    }
    // The field's own doc wins over the doc of its (enum) type.
    assert!(
        schema("IndividualEnrollment")["properties"]["spec"]["properties"]["allocationPolicy"]
            ["description"]
            .as_str()
            .unwrap()
            .contains("inherits the")
    );
}

/// All (path, rule) pairs of a schema.
fn rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(list) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in list {
            out.push((path.to_owned(), r["rule"].as_str().unwrap().to_owned()));
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "rule without message at {path}"
            );
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            rules(prop, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        rules(items, &format!("{path}[]"), out);
    }
}

fn rules_of(kind: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    rules(&schema(kind), "", &mut out);
    out
}

#[track_caller]
fn has_rule(kind: &str, path: &str, needle: &str) {
    let all = rules_of(kind);
    assert!(
        all.iter().any(|(p, r)| p == path && r.contains(needle)),
        "{kind}: no rule containing {needle:?} at {path}; rules: {all:#?}"
    );
}

#[test]
fn cel_rules_are_present() {
    let id_rule = "matches('^[A-Za-z0-9._:-]*[A-Za-z0-9-]$')";
    has_rule("IndividualEnrollment", ".spec.attestation", "exists_one");
    has_rule("IndividualEnrollment", ".spec.registrationId", id_rule);
    has_rule("IndividualEnrollment", ".spec.deviceId", id_rule);
    has_rule("IndividualEnrollment", "", "self.metadata.name");
    has_rule("IndividualEnrollment", ".spec", "'static'");
    has_rule("IndividualEnrollment", ".spec", "'custom'");
    has_rule(
        "IndividualEnrollment",
        ".spec.customAllocation.webhookUrl",
        "https",
    );
    has_rule("EnrollmentGroup", ".spec.attestation", "exists_one");
    has_rule("EnrollmentGroup", ".spec", "'static'");
    has_rule("EnrollmentGroup", ".spec", "'custom'");
    has_rule("ProvisioningService", ".spec", "'custom'");
    has_rule("ProvisioningService", ".spec", "oldSelf.idScope");
    has_rule("ProvisioningService", ".spec.regions[].cidrs", "isCIDR");
    has_rule("IoTHubLink", ".spec.hostName", "matches");
    has_rule("IoTHubLink", ".spec.deviceNamespace", "matches");
    has_rule("DeviceRegistration", ".spec.registrationId", id_rule);
    has_rule("Device", ".spec.deviceId", id_rule);
    has_rule("Device", ".spec.authentication", "'sas'");

    // No tpm on groups: the type has no such field.
    let group = schema("EnrollmentGroup");
    let att = &group["properties"]["spec"]["properties"]["attestation"]["properties"];
    assert!(att.get("tpm").is_none());
    assert!(att.get("x509").is_some() && att.get("symmetricKey").is_some());

    // Weight range and default are OpenAPI bounds (cheaper than CEL, same rejection).
    let link = schema("IoTHubLink");
    let w = &link["properties"]["spec"]["properties"]["allocationWeight"];
    assert_eq!(
        (w["minimum"].as_f64(), w["maximum"].as_f64()),
        (Some(1.0), Some(1000.0))
    );
    assert_eq!(w["default"], 1);
}

/// Every node carrying CEL rules bounds what the rules iterate over: strings have maxLength,
/// lists have maxItems and bounded string items. That keeps the apiserver's cost estimate low.
fn check_bounds(node: &Value, path: &str) {
    if node.get("x-kubernetes-validations").is_some() {
        match node["type"].as_str() {
            Some("string") => assert!(
                node["maxLength"].is_u64(),
                "{path}: string without maxLength"
            ),
            Some("array") => {
                assert!(node["maxItems"].is_u64(), "{path}: list without maxItems");
                if node["items"]["type"] == "string" {
                    assert!(
                        node["items"]["maxLength"].is_u64(),
                        "{path}: items without maxLength"
                    );
                }
            }
            _ => {}
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            if prop["type"] == "array" && path.starts_with(".spec") {
                assert!(
                    prop["maxItems"].is_u64(),
                    "{path}.{name}: spec list without maxItems"
                );
            }
            check_bounds(prop, &format!("{path}.{name}"));
        }
    }
    if let Some(items) = node.get("items") {
        check_bounds(items, &format!("{path}[]"));
    }
}

#[test]
fn cel_rules_are_bounded() {
    for kind in KINDS {
        let s = schema(kind);
        if let Some(props) = s["properties"].as_object() {
            for (name, prop) in props {
                check_bounds(prop, &format!(".{name}"));
            }
        }
    }
}

/// Compile every rule with kube-cel and run its static analysis (scope and cost) at the node
/// that carries the rule.
fn analyze(compiled: &kube::core::cel::CompiledSchema, path: &str, problems: &mut Vec<String>) {
    for v in &compiled.validations {
        match v {
            Ok(result) => {
                let rule = &result.rule.rule;
                for w in analyze_rule(rule, compiled, ScopeContext::CrdValidation) {
                    // kube-cel 0.8's scope check reports the iteration variable of a macro
                    // (`self.all(c, ...)`) as an unknown variable; the variable is bound.
                    let bound_macro_var = w.kind == WarningKind::WrongScope
                        && w.message
                            .split('\'')
                            .nth(1)
                            .is_some_and(|var| rule.contains(&format!("({var}, ")));
                    if !bound_macro_var {
                        problems.push(format!("{path}: {:?}: {}", w.kind, w.message));
                    }
                }
            }
            Err(e) => problems.push(format!("{path}: does not compile: {e}")),
        }
    }
    for (name, child) in &compiled.properties {
        analyze(child, &format!("{path}.{name}"), problems);
    }
    if let Some(items) = &compiled.items {
        analyze(items, &format!("{path}[]"), problems);
    }
}

#[test]
fn cel_rules_compile_and_pass_static_analysis() {
    for kind in KINDS {
        let compiled = compile_schema(&schema(kind));
        let mut problems = Vec::new();
        analyze(&compiled, kind, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

// --- evaluating the rules -------------------------------------------------------------------

/// CEL-evaluates `object` (YAML) against the kind's schema; returns the failure messages.
fn cel(kind: &str, object: &str) -> Vec<String> {
    cel_update(kind, object, None)
}

fn cel_update(kind: &str, object: &str, old: Option<&str>) -> Vec<String> {
    let value: Value = serde_yaml::from_str(object).unwrap();
    let old: Option<Value> = old.map(|o| serde_yaml::from_str(o).unwrap());
    match Validator::new().validate(&schema(kind), &value, old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[track_caller]
fn accepts(kind: &str, object: &str) {
    let errors = cel(kind, object);
    assert!(errors.is_empty(), "{kind} rejected: {errors:#?}\n{object}");
}

#[track_caller]
fn rejects(kind: &str, object: &str, needle: &str) {
    let errors = cel(kind, object);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "{kind}: expected a failure containing {needle:?}, got {errors:#?}\n{object}"
    );
}

fn ie(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IndividualEnrollment\nmetadata: {{name: '{name}', namespace: iot}}\nspec:\n{spec}\n"
    )
}

const SK: &str = "  attestation:\n    symmetricKey: {secretRef: {name: k}}\n";

#[test]
fn cel_individual_enrollment() {
    accepts("IndividualEnrollment", &ie("gateway-01", SK));
    accepts(
        "IndividualEnrollment",
        &ie(
            "x",
            &format!("{SK}  registrationId: 'Dev_01:a.b-'\n  deviceId: GW-01\n"),
        ),
    );
    rejects(
        "IndividualEnrollment",
        &ie("x", "  attestation: {}\n"),
        "exactly one of tpm, x509 or symmetricKey",
    );
    rejects(
        "IndividualEnrollment",
        &ie(
            "x",
            "  attestation:\n    symmetricKey: {secretRef: {name: k}}\n    tpm: {endorsementKey: AAAA}\n",
        ),
        "exactly one of tpm, x509 or symmetricKey",
    );
    for bad in ["bad id", "dev_", "dev.", "a/b"] {
        rejects(
            "IndividualEnrollment",
            &ie("x", &format!("{SK}  registrationId: '{bad}'\n")),
            "must be 1-128 characters",
        );
        rejects(
            "IndividualEnrollment",
            &ie("x", &format!("{SK}  deviceId: '{bad}'\n")),
            "must be 1-128 characters",
        );
    }
    let long = "a".repeat(129);
    rejects(
        "IndividualEnrollment",
        &ie(&long, SK),
        "metadata.name is the registration ID",
    );
    accepts(
        "IndividualEnrollment",
        &ie(&long, &format!("{SK}  registrationId: short\n")),
    );
    rejects(
        "IndividualEnrollment",
        &ie(
            "x",
            &format!("{SK}  allocationPolicy: static\n  iotHubs: [a, b]\n"),
        ),
        "static requires exactly one hub",
    );
    rejects(
        "IndividualEnrollment",
        &ie("x", &format!("{SK}  allocationPolicy: static\n")),
        "static requires exactly one hub",
    );
    accepts(
        "IndividualEnrollment",
        &ie(
            "x",
            &format!("{SK}  allocationPolicy: static\n  iotHubs: [a]\n"),
        ),
    );
    rejects(
        "IndividualEnrollment",
        &ie("x", &format!("{SK}  allocationPolicy: custom\n")),
        "custom requires customAllocation",
    );
    accepts(
        "IndividualEnrollment",
        &ie(
            "x",
            &format!(
                "{SK}  allocationPolicy: custom\n  customAllocation: {{webhookUrl: 'https://alloc.example:9443/allocate'}}\n"
            ),
        ),
    );
    rejects(
        "IndividualEnrollment",
        &ie(
            "x",
            &format!("{SK}  customAllocation: {{webhookUrl: 'http://alloc.example/allocate'}}\n"),
        ),
        "https://",
    );
}

fn eg(spec: &str) -> String {
    format!(
        "apiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {{name: g, namespace: iot}}\nspec:\n{spec}\n"
    )
}

#[test]
fn cel_enrollment_group() {
    accepts("EnrollmentGroup", &eg(SK));
    rejects(
        "EnrollmentGroup",
        &eg("  attestation:\n    tpm: {endorsementKey: AAAA}\n"),
        "enrollment groups do not support tpm",
    );
    rejects(
        "EnrollmentGroup",
        &eg(&format!("{SK}  allocationPolicy: static\n  iotHubs: []\n")),
        "static requires exactly one hub",
    );
}

fn link(spec: &str) -> String {
    format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: l, namespace: iot}}\nspec: {spec}\n"
    )
}

#[test]
fn cel_iot_hub_link() {
    accepts(
        "IoTHubLink",
        &link("{hostName: hub-west.example.com, deviceNamespace: hub-west, region: west}"),
    );
    rejects(
        "IoTHubLink",
        &link("{hostName: 'hub_west', deviceNamespace: h}"),
        "DNS host name",
    );
    rejects(
        "IoTHubLink",
        &link("{hostName: h, deviceNamespace: Hub}"),
        "namespace name",
    );
    rejects(
        "IoTHubLink",
        &link("{hostName: h, deviceNamespace: h, region: 'West'}"),
        "DNS label",
    );
}

fn ps(spec: &str) -> String {
    format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: iot}}\nspec:\n{spec}\n"
    )
}

#[test]
fn cel_provisioning_service() {
    accepts("ProvisioningService", &ps("  {}"));
    accepts(
        "ProvisioningService",
        &ps(
            "  idScope: 0ne00000A11\n  regions: [{name: west, cidrs: [10.0.0.0/8, 'fd00::/8']}]\n  endpoint: {dnsNames: [dps.example.com, '*.example.com']}",
        ),
    );
    rejects(
        "ProvisioningService",
        &ps("  allocationPolicy: custom"),
        "custom requires customAllocation",
    );
    rejects(
        "ProvisioningService",
        &ps("  regions: [{name: west, cidrs: [10.0.0.0/33]}]"),
        "must be a CIDR",
    );
    rejects(
        "ProvisioningService",
        &ps("  idScope: '0ne-1'"),
        "letters and digits",
    );
    rejects(
        "ProvisioningService",
        &ps("  endpoint: {dnsNames: [DPS.example.com]}"),
        "lower-case DNS name",
    );
    // idScope is immutable once set...
    let errors = cel_update(
        "ProvisioningService",
        &ps("  idScope: 0ne00000B22"),
        Some(&ps("  idScope: 0ne00000A11")),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("idScope cannot be changed")),
        "{errors:?}"
    );
    let errors = cel_update(
        "ProvisioningService",
        &ps("  {}"),
        Some(&ps("  idScope: 0ne00000A11")),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("idScope cannot be changed")),
        "{errors:?}"
    );
    // ...but may be set later, and other fields may change.
    assert!(
        cel_update(
            "ProvisioningService",
            &ps("  idScope: 0ne00000A11"),
            Some(&ps("  {}"))
        )
        .is_empty()
    );
    assert!(
        cel_update(
            "ProvisioningService",
            &ps("  idScope: 0ne00000A11\n  replicas: 3"),
            Some(&ps("  idScope: 0ne00000A11"))
        )
        .is_empty()
    );
}

#[test]
fn cel_device_and_registration() {
    let device = |auth: &str| {
        format!(
            "apiVersion: kdps.io/v1alpha1\nkind: Device\nmetadata: {{name: d, namespace: hub-west}}\nspec:\n  deviceId: d\n  hub: {{hostName: h, linkName: l}}\n  authentication: {auth}\n"
        )
    };
    accepts(
        "Device",
        &device("{type: sas, symmetricKey: {secretRef: {name: d-keys}}}"),
    );
    accepts("Device", &device("{type: certificateAuthority}"));
    accepts(
        "Device",
        &device(
            "{type: selfSigned, x509Thumbprint: {primarySha1: 0123456789ABCDEF0123456789ABCDEF01234567}}",
        ),
    );
    rejects("Device", &device("{type: sas}"), "type sas requires");
    rejects(
        "Device",
        &device("{type: selfSigned}"),
        "type selfSigned requires",
    );

    let dr = |spec: &str| {
        format!(
            "apiVersion: kdps.io/v1alpha1\nkind: DeviceRegistration\nmetadata: {{name: r, namespace: iot}}\nspec:\n  registrationId: r\n  enrollment: {{kind: EnrollmentGroup, name: g}}\n  attestationType: symmetricKey\n{spec}\n"
        )
    };
    accepts(
        "DeviceRegistration",
        &dr("  status: assigned\n  assignedHub: h\n  deviceId: r"),
    );
    accepts(
        "DeviceRegistration",
        &dr("  status: failed\n  lastError: {code: 400207, message: m}"),
    );
    rejects(
        "DeviceRegistration",
        &dr("  status: assigned"),
        "assignedHub and deviceId",
    );
}

/// CEL and the Rust validators agree on the cross-field rules: standalone mode, which has no
/// apiserver, rejects exactly what `kubectl apply` would.
#[test]
fn cel_and_rust_validators_agree() {
    use kdps_api::v1alpha1::{EnrollmentGroup, IndividualEnrollment, IoTHubLink};
    let now = common::now();
    let ie_cases = [
        (ie("gateway-01", SK), true),
        (ie("x", "  attestation: {}\n"), false),
        (ie("x", &format!("{SK}  registrationId: 'dev_'\n")), false),
        (ie("x", &format!("{SK}  deviceId: 'a b'\n")), false),
        (ie(&"a".repeat(129), SK), false),
        (
            ie(
                "x",
                &format!("{SK}  allocationPolicy: static\n  iotHubs: [a, b]\n"),
            ),
            false,
        ),
        (ie("x", &format!("{SK}  allocationPolicy: custom\n")), false),
        (
            ie(
                "x",
                &format!("{SK}  customAllocation: {{webhookUrl: 'http://a.example/x'}}\n"),
            ),
            false,
        ),
    ];
    for (text, ok) in ie_cases {
        let typed: IndividualEnrollment = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            cel("IndividualEnrollment", &text).is_empty(),
            ok,
            "CEL: {text}"
        );
        assert_eq!(
            validation::validate_individual_enrollment(&typed, now).is_ok(),
            ok,
            "Rust: {text}"
        );
    }
    let eg_cases = [
        (eg(SK), true),
        (
            eg("  attestation:\n    tpm: {endorsementKey: AAAA}\n"),
            false,
        ),
        (eg(&format!("{SK}  allocationPolicy: static\n")), false),
    ];
    for (text, ok) in eg_cases {
        let typed: EnrollmentGroup = serde_yaml::from_str(&text).unwrap();
        assert_eq!(cel("EnrollmentGroup", &text).is_empty(), ok, "CEL: {text}");
        assert_eq!(
            validation::validate_enrollment_group(&typed, now).is_ok(),
            ok,
            "Rust: {text}"
        );
    }
    let link_cases = [
        (link("{hostName: a.example.com, deviceNamespace: a}"), true),
        (link("{hostName: 'a_b', deviceNamespace: a}"), false),
        (link("{hostName: a, deviceNamespace: 'A'}"), false),
        (
            link("{hostName: a, deviceNamespace: a, region: 'x y'}"),
            false,
        ),
    ];
    for (text, ok) in link_cases {
        let typed: IoTHubLink = serde_yaml::from_str(&text).unwrap();
        assert_eq!(cel("IoTHubLink", &text).is_empty(), ok, "CEL: {text}");
        assert_eq!(
            validation::validate_iot_hub_link(&typed).is_ok(),
            ok,
            "Rust: {text}"
        );
    }
}

fn formats(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(f)) = map.get("format") {
                out.push((path.to_owned(), f.clone()));
            }
            for (k, v) in map {
                formats(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| formats(v, path, out)),
        _ => {}
    }
}

/// The apiserver warns about formats it does not know (schemars would emit `uint32` for u32).
#[test]
fn only_formats_kubernetes_knows() {
    for kind in KINDS {
        let mut found = Vec::new();
        formats(&schema(kind), kind, &mut found);
        for (path, f) in found {
            assert!(
                ["int32", "int64", "date-time"].contains(&f.as_str()),
                "{path}: format {f}"
            );
        }
    }
}
