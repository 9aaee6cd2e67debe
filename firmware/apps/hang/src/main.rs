//! hang: arms the app watchdog, then stops answering (a busy loop that never kicks it): the
//! visor must restart it, and an update that hangs like this is rolled back.
#![no_std]
#![no_main]

keel_app::entry!(main);

fn main() -> ! {
    match keel_app::watchdog_start(50) {
        Ok(()) => keel_app::info!("hang: watchdog armed (50 ms); hanging now"),
        Err(e) => keel_app::error!("hang: watchdog_start failed: {}", e.name()),
    }
    loop {
        core::hint::spin_loop();
    }
}
