//! End to end: `keel server` + `keel device provision` + a QEMU device + `keel logs --follow`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device};
use keel_vdev::{elf, flash};

mod common;

use common::*;

#[test]
fn provision_boot_online_and_follow_logs() {
    let dir = keel_vdev::repo_root().join("target/e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    let init = keel(&["server", "init", "--data", &data_s], &[]);
    let token = init["token"].as_str().unwrap().to_string();

    let (http, gw) = (free_port(), free_port());
    let server = start_server(&data_s, http, gw, false);

    // Log in once; later commands find the server and token in the config file.
    let url = format!("http://127.0.0.1:{http}");
    let config = dir.join("config.toml").display().to_string();
    let login = [("KEEL_SERVER", url.as_str()), ("KEEL_TOKEN", token.as_str()), ("KEEL_CONFIG", config.as_str())];
    assert_eq!(keel(&["login"], &login)["server"], url.as_str());
    let env = [("KEEL_CONFIG", config.as_str())];
    let flash_path = dir.join("dev.flash");
    let fp = flash_path.display().to_string();
    let gws = gw.to_string();
    let prov = keel(
        &["device", "provision", "--flash", &fp, "--name", "e2e-1", "--tags", "lab,e2e", "--gateway-port", &gws],
        &env,
    );
    let id = prov["device"]["id"].as_str().unwrap().to_string();
    assert_eq!(keel(&["devices"], &env)[0]["online"], false);

    let img = elf::image_from_elf(&keel_vdev::app_elf("hello"), "2.0.0").unwrap();
    flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
    // Real time: this test is about the link to a real server, not about timing. Under
    // `-icount sleep=off` an idle device skips ahead to its next timer, so 100 s of device time
    // (the server-silence timeout) can pass while the server's reply is a millisecond away.
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path.clone(), clock: Clock::RealTime };
    let mut qemu = dev.start().unwrap();

    // Follow the device's logs through the CLI until the app's lines arrive with server time.
    let mut follow = Kill(
        Command::new(KEEL).args(["logs", &id, "--follow", "--json"]).envs(env).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let (tx, rx) = channel();
    let out = follow.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut app_lines = 0;
    let mut seqs = Vec::new();
    while app_lines < 3 {
        let Ok(line) = rx.recv_timeout(LIMIT) else {
            panic!("no logs; device console:\n{}", qemu.kill().join("\n"));
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seqs.push(v["seq"].as_u64().unwrap());
        let text = v["text"].as_str().unwrap();
        if text.starts_with("hello: device=") && !text.ends_with("wall=not-set") {
            assert!(text.contains(&id), "{text}");
            app_lines += 1;
        }
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gaps: {seqs:?}");

    let d = &keel(&["devices"], &env)[0];
    assert_eq!(d["id"], id.as_str());
    if d["online"] != true {
        panic!("not online: {d}\ndevice console:\n{}", qemu.kill().join("\n"));
    }
    assert_eq!(d["app_name"], "hello");
    assert_eq!(d["app_version"], "2.0.0");
    assert_eq!(d["tags"], serde_json::json!(["e2e", "lab"]));
    let shown = keel(&["device", "show", &id], &env);
    let boot = shown["last_boot"]["text"].as_str().unwrap_or_else(|| panic!("no last boot: {shown}"));
    assert!(boot.starts_with("boot #1 visor") && boot.contains("power-on"), "{boot}");
    assert_eq!(keel(&["devices", "--tag", "lab"], &env).as_array().map(Vec::len), Some(1));
    assert_eq!(keel(&["devices", "--tag", "field"], &env).as_array().map(Vec::len), Some(0));
    drop(follow);

    // Kill the server (like a crash) while the device keeps logging, then start it again: the
    // device reconnects by itself and the server ends up with every record exactly once, in order.
    drop(server);
    qemu.wait_for("connection lost", LIMIT, |l| l.contains("net: connection lost")).unwrap();
    let _server = start_server(&data_s, http, gw, true);
    qemu.wait_for("online again", LIMIT, |l| l.contains("net: online")).unwrap();
    let before = *seqs.last().unwrap();
    let mut all = Vec::new();
    for _ in 0..200 {
        let v = keel(&["logs", &id], &env);
        all = v.as_array().map(|a| a.iter().map(|r| r["seq"].as_u64().unwrap()).collect()).unwrap_or_default();
        if all.last().is_some_and(|&l| l > before + 3) {
            break;
        }
        qemu.run_for(Duration::from_millis(50));
    }
    assert!(all.last().is_some_and(|&l| l > before + 3), "records logged after the restart arrive: {all:?}");
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "every record exactly once, in order: {all:?}");
    assert_eq!(all[0] & 0xFFFF_FFFF, 0, "from the first record of the boot");
}
