fn main() {
    println!("cargo:rustc-link-arg-bins=-Tkeel_app.ld");
}
