use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: a fresh machine needs no system protoc.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; PROTOC is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "pac/common/v1/common.proto",
        "pac/records/v1/records.proto",
        "pac/scheduling/v1/scheduling.proto",
        "pac/referrals/v1/referrals.proto",
        "pac/access/v1/access.proto",
        "pac/audit/v1/audit.proto",
        "pac/interop/v1/interop.proto",
    ];
    tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("pac_descriptor.bin")).compile_protos(&protos, &["."])?;
    println!("cargo:rerun-if-changed=pac");
    Ok(())
}
