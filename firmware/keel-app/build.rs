//! Makes `keel_app.ld` available to the app binaries (they link with `-Tkeel_app.ld`).
fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::copy("keel_app.ld", out.join("keel_app.ld")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=keel_app.ld");
}
