//! The `compute.v1` protobuf messages (`contract/proto/compute/v1/`), generated at build time
//! with prost, and their proto3 JSON mapping (pbjson): what a Go or Java caller sends as
//! `json/protobuf`. The tests read every golden payload of `contract/examples/` through these
//! messages and back into the contract's types.

#![allow(missing_docs, clippy::all, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/compute.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/compute.v1.serde.rs"));
