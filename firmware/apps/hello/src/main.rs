//! hello: logs the device id and the time once a second; applies a ready update at once and
//! confirms an update it runs on trial.
#![no_std]
#![no_main]

keel_app::entry!(main);

fn main() -> ! {
    let id = keel_app::device_id();
    let abi = keel_app::abi_info();
    match abi {
        Ok(a) => keel_app::info!(
            "hello: started abi={}.{} visor={}.{}.{}",
            a.abi_major,
            a.abi_minor,
            a.visor_major,
            a.visor_minor,
            a.visor_patch
        ),
        Err(e) => keel_app::error!("hello: abi_info failed: {}", e.name()),
    }
    // After an update, this app is on trial until it says it works.
    if keel_app::update_info().is_ok_and(|u| u.on_trial == 1) {
        match keel_app::update_confirm() {
            Ok(()) => keel_app::info!("hello: update confirmed"),
            Err(e) => keel_app::error!("hello: update_confirm failed: {}", e.name()),
        }
    }
    loop {
        let uptime_ms = keel_app::monotonic_us() / 1000;
        let id = id.as_ref().map_or("?", |d| d.as_str());
        match keel_app::wall_time_us() {
            Ok(w) => keel_app::info!("hello: device={} uptime_ms={} wall={}", id, uptime_ms, w),
            Err(_) => keel_app::info!("hello: device={} uptime_ms={} wall=not-set", id, uptime_ms),
        }
        // Sleep a second, but apply an update as soon as the visor says one is ready.
        let end = keel_app::monotonic_us() + 1_000_000;
        loop {
            let now = keel_app::monotonic_us();
            if now >= end {
                break;
            }
            if keel_app::wait((end - now) as u32) & keel_app::events::UPDATE_READY != 0 {
                keel_app::info!("hello: an update is ready; applying it now");
                let s = keel_app::update_apply();
                keel_app::error!("hello: update_apply failed: {}", s.name());
            }
        }
    }
}
