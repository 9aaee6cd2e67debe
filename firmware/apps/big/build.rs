fn main() {
    println!("cargo:rustc-link-arg-bins=-Tkeel_app.ld");
    // 234 KiB of filler for the image (a pseudo-random pattern, so nothing can shrink it).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("blob.bin");
    let blob: Vec<u8> = (0..234 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(out, blob).unwrap();
}
