fn main() {
    println!("cargo:rustc-link-arg-bins=-Tkeel_app.ld");
    // Room on the stack for 64 KiB receive buffers (the linker script's default is 16 KiB).
    println!("cargo:rustc-link-arg-bins=--defsym=__keel_stack_size=163840");
}
