//! With the `cuda` feature, compiles the project's CUDA kernel (src/vision/kernels/depthwise.cu)
//! to PTX for a candle custom op. Needs `nvcc` on PATH (see README "GPU"); does nothing otherwise.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // PTX for the architecture asked for (oldest supported by default); the driver compiles it
    // for the GPU it runs on.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "70".into());
    let source = "src/vision/kernels/depthwise.cu";
    println!("cargo:rerun-if-changed={source}");
    let status = std::process::Command::new("nvcc")
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(out.join("depthwise.ptx"))
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("the cuda feature needs nvcc on PATH to build {source}: {e}"));
    assert!(status.success(), "nvcc failed on {source}");
}
