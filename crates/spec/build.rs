//! Compiles the tvix.build.v1, snix.build.v1 and tvix_oci_build.v1 protos with `protox` (pure
//! Rust), so building needs no system `protoc`. The castore messages come
//! from the castore crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let castore = "../castore/protos";
    let protos = [
        "protos/tvix/build/v1/build.proto",
        "protos/snix/build/v1/build.proto",
        "protos/tvix_oci_build/v1/build.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["protos", castore])?;
    tonic_prost_build::configure()
        .bytes(".")
        // Large requests decode off the runtime's turn (src/codec.rs).
        .codec_path("crate::codec::BuildCodec")
        .extern_path(".tvix.castore.v1", "::tvix_oci_castore::proto")
        .compile_fds(fds)?;
    Ok(())
}
