//! Compiles the castore protos with `protox` (pure Rust), so building needs no
//! system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/tvix/castore/v1/castore.proto",
        "protos/snix/castore/v1/castore.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["protos"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
