//! The Runner protocol's messages (no service: requests and answers pass as
//! bytes), from the same .proto the gateway uses.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = "../../protos";
    let file = "agentmark/runner/v1/runner.proto";
    println!("cargo:rerun-if-changed={protos}/{file}");
    let descriptors = protox::compile([file], [protos])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
