#![no_std]
#![no_main]
keel_app::entry!(main);
fn main() -> ! {
    loop {}
}
