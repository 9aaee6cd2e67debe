fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg-bins=-T{dir}/visor.ld");
    println!("cargo:rerun-if-changed=visor.ld");
}
