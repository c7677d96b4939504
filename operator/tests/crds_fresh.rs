//! `crds/` and the chart's `templates/crds/` must be exactly what `kdps-operator crdgen`
//! generates from the Rust types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

const REGENERATE: &str =
    "cargo run -p kdps-operator -- crdgen --out-dir crds --chart-dir charts/kdps/templates/crds";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdps-operator"))
}

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn chart_crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kdps/templates/crds")
}

fn read_dir(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}; regenerate with `{REGENERATE}`", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn committed_crds_are_fresh() {
    let out = std::env::temp_dir().join(format!("kdps-crdgen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = bin()
        .args(["crdgen", "--out-dir"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let generated = read_dir(&out);
    std::fs::remove_dir_all(&out).unwrap();

    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        [
            "deviceregistrations.kdps.io.yaml",
            "devices.kdps.io.yaml",
            "enrollmentgroups.kdps.io.yaml",
            "individualenrollments.kdps.io.yaml",
            "iothublinks.kdps.io.yaml",
            "provisioningservices.kdps.io.yaml",
        ]
    );
    let committed = read_dir(&crds_dir());
    let stale: Vec<&String> = generated
        .iter()
        .filter(|(name, yaml)| committed.get(*name) != Some(yaml))
        .map(|(name, _)| name)
        .chain(committed.keys().filter(|n| !generated.contains_key(*n)))
        .collect();
    assert!(
        stale.is_empty(),
        "crds/ is stale ({stale:?} differ from the Rust types); regenerate with `{REGENERATE}`"
    );
}

#[test]
fn stdout_is_one_multi_document_stream_of_all_crds() {
    let out = bin().arg("crdgen").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 6);
    let committed = read_dir(&crds_dir());
    for doc in docs {
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        let name = doc["metadata"]["name"].as_str().unwrap();
        let file: serde_json::Value =
            serde_yaml::from_str(&committed[&format!("{name}.yaml")]).unwrap();
        assert_eq!(doc, file, "{name}");
    }
}

fn generate(flag: &str) -> BTreeMap<String, String> {
    let out = std::env::temp_dir().join(format!(
        "kdps-crdgen-{}-{}",
        flag.trim_start_matches('-'),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let status = bin().args(["crdgen", flag]).arg(&out).status().unwrap();
    assert!(status.success());
    let generated = read_dir(&out);
    std::fs::remove_dir_all(&out).unwrap();
    generated
}

#[test]
fn committed_chart_crds_are_fresh() {
    let generated = generate("--chart-dir");
    assert_eq!(generated.len(), 6);
    let committed = read_dir(&chart_crds_dir());
    let stale: Vec<&String> = generated
        .iter()
        .filter(|(name, yaml)| committed.get(*name) != Some(yaml))
        .map(|(name, _)| name)
        .chain(committed.keys().filter(|n| !generated.contains_key(*n)))
        .collect();
    assert!(
        stale.is_empty(),
        "charts/kdps/templates/crds is stale ({stale:?}); regenerate with `{REGENERATE}`"
    );
}

#[test]
fn chart_templates_wrap_the_same_crds() {
    // Removing the template lines must give back exactly the CRD (plus the chart metadata).
    for (name, template) in read_dir(&chart_crds_dir()) {
        assert!(
            template.contains("{{- if .Values.crds.enabled }}"),
            "{name}"
        );
        assert!(template.contains("helm.sh/resource-policy: keep"), "{name}");
        let plain: String = template
            .lines()
            .filter(|l| !l.contains("{{") && !l.trim_start().starts_with('#'))
            .filter(|l| {
                !matches!(
                    l.trim(),
                    "labels:" | "annotations:" | "helm.sh/resource-policy: keep"
                )
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let chart: serde_json::Value = serde_yaml::from_str(&plain).unwrap();
        let crd: serde_json::Value = serde_yaml::from_str(&read_dir(&crds_dir())[&name]).unwrap();
        assert_eq!(chart, crd, "{name}");
    }
}

#[test]
fn run_without_a_cluster_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--admin-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting to Kubernetes"), "{stderr}");
}
