//! Generates the gRPC code for `kdps.registration.v1` into OUT_DIR.
//!
//! The `.proto` files are compiled with protox (pure Rust), so no system `protoc` is needed.
//! The encoded FileDescriptorSet (with imports, for server reflection) is written next to
//! the generated code.

use std::{env, fs, io, path::PathBuf};

const PROTOS: &[&str] = &["kdps/registration/v1/registration.proto"];
const DESCRIPTOR_FILE: &str = "kdps_registration_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())
        .map_err(|e: io::Error| format!("generating gRPC code: {e}"))?;
    Ok(())
}
