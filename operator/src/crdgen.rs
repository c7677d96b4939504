//! `kdps-operator crdgen`: render the kdps.io CustomResourceDefinitions as YAML.
//!
//! Rust is the single source of truth for the CRDs: `crds/` is generated from
//! [`kdps_api::crds`] and a test fails when it is stale.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Command that regenerates `crds/`, quoted in errors about stale files.
pub const REGENERATE: &str = "cargo run -p kdps-operator -- crdgen --out-dir crds";

/// Errors from rendering or writing CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdgenError {
    /// A CRD could not be serialised.
    #[error("serialising CRD {name} to YAML: {source}")]
    Serialize {
        /// CRD name.
        name: String,
        /// Cause.
        source: serde_yaml::Error,
    },
    /// A file or stdout could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Cause.
        source: io::Error,
    },
}

/// The file name of a CRD in `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document (without a leading `---`).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdgenError> {
    serde_yaml::to_string(crd).map_err(|source| CrdgenError::Serialize {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// All CRDs as one multi-document YAML stream.
pub fn render_all(crds: &[CustomResourceDefinition]) -> Result<String, CrdgenError> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&to_yaml(crd)?);
    }
    Ok(out)
}

/// Write every CRD to `dir/<file_name>`; returns the paths written.
pub fn write_dir(
    crds: &[CustomResourceDefinition],
    dir: &Path,
) -> Result<Vec<PathBuf>, CrdgenError> {
    fs::create_dir_all(dir).map_err(|source| CrdgenError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let mut written = Vec::with_capacity(crds.len());
    for crd in crds {
        let path = dir.join(file_name(crd));
        let yaml = to_yaml(crd)?;
        // Write to a temporary file and rename, so an interrupted run never leaves half a CRD.
        let tmp = path.with_extension("yaml.tmp");
        fs::write(&tmp, yaml)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| CrdgenError::Write {
                path: path.display().to_string(),
                source,
            })?;
        written.push(path);
    }
    Ok(written)
}

/// Run `crdgen`: to stdout as multi-document YAML, or one file per CRD into `out_dir`.
pub fn run(out_dir: Option<&Path>) -> Result<(), CrdgenError> {
    let crds = kdps_api::crds();
    match out_dir {
        Some(dir) => {
            for path in write_dir(&crds, dir)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        None => {
            let yaml = render_all(&crds)?;
            io::stdout()
                .lock()
                .write_all(yaml.as_bytes())
                .map_err(|source| CrdgenError::Write {
                    path: "stdout".to_owned(),
                    source,
                })
        }
    }
}
