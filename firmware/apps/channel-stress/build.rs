fn main() {
    // Room on the stack for 64 KiB receive buffers (the SDK's linker script provides 16 KiB
    // unless the app defines `__keel_stack_size` first).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out.join("stack.ld"), "__keel_stack_size = 160K;\n").unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tstack.ld");
    println!("cargo:rustc-link-arg-bins=-Tkeel_app.ld");
}
