//! Compiles `proto/compute/v1/*.proto` (package `compute.v1`) with prost, and their proto3
//! JSON mapping with pbjson, with no protoc: protox parses the files in Rust.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protos = ["proto/compute/v1/compute.proto"];
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_file = out.join("compute.v1.descriptors.bin");
    let descriptors = protox::compile(protos, ["proto"])?;
    std::fs::write(&descriptor_file, descriptors.encode_to_vec())?;
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_file)
        .skip_protoc_run()
        .compile_protos(&protos, &["proto"])?;
    // Standard proto3 JSON, as Go's protojson and Java's JsonFormat write it by default:
    // default values (`false`, `0`, `[]`) left out.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_file)?)?
        .build(&[".compute.v1"])?;
    Ok(())
}
