//! Standalone mode's configuration source: a folder of the same YAML manifests a cluster would
//! get with `kubectl apply -f`.
//!
//! Every `kdps.io` object and every `v1` Secret in `*.yaml` / `*.yml` files (multi-document
//! allowed, subfolders included) is read. Other kinds are ignored. One bad document or file is
//! reported with its file, object and reason and does not stop the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// One object read from a manifest file, not yet typed.
#[derive(Clone, Debug)]
pub struct RawObject {
    /// The file the object came from.
    pub file: PathBuf,
    /// Position of the document in its file (1-based).
    pub document: usize,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name` (may be empty when missing; validation reports it).
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// The whole object as JSON.
    pub value: serde_json::Value,
}

impl RawObject {
    /// `Kind namespace/name` for messages.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {}/{}", self.kind, ns, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// A manifest that could not be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// The file.
    pub file: PathBuf,
    /// The object (`Kind namespace/name`), or `document N` when it could not be identified.
    pub object: String,
    /// Why it was not used.
    pub reason: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.object,
            self.reason
        )
    }
}

/// Errors that stop the whole load (the folder itself is unreadable).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest folder does not exist or cannot be listed.
    #[error("cannot read manifest folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The objects of a manifest folder plus the problems found while reading it.
#[derive(Debug, Default)]
pub struct ManifestSet {
    /// Objects that parsed as Kubernetes objects of a kind we read.
    pub objects: Vec<RawObject>,
    /// Files and documents that could not be read.
    pub problems: Vec<ManifestProblem>,
}

/// Largest manifest file read; bigger files are reported, not loaded.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether a document is one standalone mode reads.
fn is_wanted(api_version: &str, kind: &str) -> bool {
    api_version.starts_with("kdps.io/") || (api_version == "v1" && kind == "Secret")
}

/// Lists the manifest files of a folder (recursively), sorted for a stable load order.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ManifestError::Folder {
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if ft.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A cheap fingerprint of the folder (file names, sizes and modification times), used to
/// notice changes without reading every file.
pub fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, ManifestError> {
    Ok(manifest_files(dir)?
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect())
}

/// Reads every manifest in `dir`.
pub fn load_dir(dir: &Path) -> Result<ManifestSet, ManifestError> {
    let mut set = ManifestSet::default();
    for file in manifest_files(dir)? {
        load_file(&file, &mut set);
    }
    Ok(set)
}

fn load_file(file: &Path, set: &mut ManifestSet) {
    let problem = |object: String, reason: String| ManifestProblem {
        file: file.to_path_buf(),
        object,
        reason,
    };
    match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            set.problems.push(problem(
                "file".into(),
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            set.problems
                .push(problem("file".into(), format!("cannot read: {e}")));
            return;
        }
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            set.problems
                .push(problem("file".into(), format!("cannot read: {e}")));
            return;
        }
    };
    parse_documents(file, &text, set);
}

/// Parses the YAML documents of one file into `set`.
pub fn parse_documents(file: &Path, text: &str, set: &mut ManifestSet) {
    let problem = |object: String, reason: String| ManifestProblem {
        file: file.to_path_buf(),
        object,
        reason,
    };
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = index + 1;
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                set.problems.push(problem(
                    format!("document {document}"),
                    format!("invalid YAML: {e}"),
                ));
                // A syntax error leaves the rest of the stream unusable.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            set.problems.push(problem(
                format!("document {document}"),
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
            continue;
        };
        if kind == "List" && api_version == "v1" {
            set.problems.push(problem(
                format!("document {document}"),
                "v1 List objects are not supported; put one object per document".into(),
            ));
            continue;
        }
        if !is_wanted(&api_version, &kind) {
            continue;
        }
        let meta = value.get("metadata");
        let meta_str = |name: &str| {
            meta.and_then(|m| m.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let name = meta_str("name").unwrap_or_default();
        let namespace = meta_str("namespace");
        set.objects.push(RawObject {
            file: file.to_path_buf(),
            document,
            api_version,
            kind,
            name,
            namespace,
            value,
        });
    }
}

/// Decodes the data of a `v1` Secret: `data` (base64) merged with `stringData` (plain), as the
/// apiserver does (stringData wins).
pub fn secret_data(obj: &RawObject) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    if let Some(data) = obj.value.get("data").and_then(|d| d.as_object()) {
        for (k, v) in data {
            let s = v
                .as_str()
                .ok_or_else(|| format!("data.{k} is not a string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| format!("data.{k} is not valid base64"))?;
            out.insert(k.clone(), bytes);
        }
    }
    if let Some(data) = obj.value.get("stringData").and_then(|d| d.as_object()) {
        for (k, v) in data {
            let s = v
                .as_str()
                .ok_or_else(|| format!("stringData.{k} is not a string"))?;
            out.insert(k.clone(), s.as_bytes().to_vec());
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_files_and_reports_bad_documents() {
        let text = r#"
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {name: hub-west, namespace: iot}
spec: {hostName: hub-west.example.com, deviceNamespace: hub-west}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
kind: Secret
metadata: {name: no-api-version}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
data: {primaryKey: aGVsbG8=}
stringData: {secondaryKey: world}
---
"#;
        let mut set = ManifestSet::default();
        parse_documents(Path::new("a.yaml"), text, &mut set);
        assert_eq!(set.objects.len(), 2);
        assert_eq!(set.objects[0].display_name(), "IoTHubLink iot/hub-west");
        assert_eq!(set.problems.len(), 1);
        assert_eq!(set.problems[0].object, "document 3");
        let data = secret_data(&set.objects[1]).unwrap();
        assert_eq!(data["primaryKey"], b"hello");
        assert_eq!(data["secondaryKey"], b"world");
    }

    #[test]
    fn a_syntax_error_is_reported_with_the_file() {
        let mut set = ManifestSet::default();
        parse_documents(Path::new("bad.yaml"), "a: [unclosed", &mut set);
        assert!(set.objects.is_empty());
        assert_eq!(set.problems.len(), 1);
        assert!(set.problems[0].reason.starts_with("invalid YAML"));
        assert_eq!(set.problems[0].file, PathBuf::from("bad.yaml"));
    }

    #[test]
    fn bad_secret_data_is_reported() {
        let mut set = ManifestSet::default();
        parse_documents(
            Path::new("s.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '!!notbase64'}\n",
            &mut set,
        );
        let err = secret_data(&set.objects[0]).unwrap_err();
        assert_eq!(err, "data.k is not valid base64");
    }

    #[test]
    fn lists_yaml_files_recursively_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), "").unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), "").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "").unwrap();
        std::fs::write(dir.path().join("README.md"), "").unwrap();
        let files = manifest_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            vec![PathBuf::from("a.yaml"), PathBuf::from("sub/b.yml")]
        );
    }
}
