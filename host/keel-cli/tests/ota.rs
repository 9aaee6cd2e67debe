//! End to end over the air: a real `keel server`, the `keel` CLI (keys, bundles, uploads,
//! deployments) and a QEMU device that updates itself over its cloud link.
//!
//! v1 runs from the factory; v2 is deployed and confirmed; a crashing v3, a hanging v4 and a
//! never-confirming v5 are each rolled back to v2 with the reason reported; a bundle with a
//! lower sequence is refused by the device; a layer tampered in the object store is refused by
//! the device; a wrongly signed bundle is refused at upload; a 256 KiB update whose download is
//! cut by a server crash resumes where it stopped.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};

struct World {
    env: Vec<(String, String)>,
    dir: std::path::PathBuf,
    device: String,
}

impl World {
    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn keel(&self, args: &[&str]) -> serde_json::Value {
        keel(args, &self.env())
    }

    /// Builds and uploads a bundle of `app` as `hello` `version`; returns the bundle id.
    fn ship(&self, app: &str, version: &str, sequence: u64, extra: &[&str]) -> String {
        let out = self.dir.join(format!("{app}-{version}.keelb")).display().to_string();
        let elf = keel_vdev::app_elf(app).display().to_string();
        let key = self.dir.join("release.key").display().to_string();
        let seq = sequence.to_string();
        let mut args = vec!["bundle", &elf, "--key", &key, "--version", version, "--sequence", &seq, "--name", "hello"];
        args.extend_from_slice(&["--out", &out]);
        args.extend_from_slice(extra);
        self.keel(&args);
        self.keel(&["apps", "upload", &out])["id"].as_str().unwrap().to_string()
    }

    fn deploy(&self, bundle: &str) {
        self.keel(&["deploy", bundle, "--device", &self.device]);
    }

    fn update(&self) -> serde_json::Value {
        self.keel(&["devices", "show", &self.device])["update"].clone()
    }

    /// Runs the device until the server shows an update of `sequence` in `state`.
    fn wait_state(&self, qemu: &mut Running, sequence: u64, state: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let u = self.update();
            if u["sequence"] == sequence && u["state"] == state {
                return u;
            }
            assert!(start.elapsed() < LIMIT * 2, "no {state} for {sequence}; last {u}\n{}", tail(qemu));
            qemu.run_for(Duration::from_millis(100));
        }
    }
}

/// Waits for a console line matching `pred` printed since line `mark` (it may already be there:
/// polling the server also collects the console).
fn saw_since(qemu: &mut Running, mark: usize, what: &str, pred: impl Fn(&str) -> bool) {
    if qemu.lines[mark.min(qemu.lines.len())..].iter().any(|l| pred(l)) {
        return;
    }
    qemu.wait_for(what, LIMIT, pred).unwrap_or_else(|e| panic!("{e}"));
}

fn tail(qemu: &Running) -> String {
    qemu.lines.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")
}

/// A server, an account logged in, a release key registered, and a device provisioned to trust
/// it with hello 1.0.0 in slot A.
struct Setup {
    world: World,
    server: Kill,
    dev: Device,
    data: String,
    url: String,
    http: u16,
    gw: u16,
    token: String,
}

fn setup(name: &str) -> Setup {
    let dir = keel_vdev::repo_root().join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data").display().to_string();
    let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
    let (http, gw) = (free_port(), free_port());
    let server = start_server(&data, http, gw, false);
    let url = format!("http://127.0.0.1:{http}");
    let config = dir.join("config.toml").display().to_string();
    keel(&["login"], &[("KEEL_SERVER", &url), ("KEEL_TOKEN", &token), ("KEEL_CONFIG", &config)]);
    let mut world = World { env: vec![("KEEL_CONFIG".into(), config)], dir: dir.clone(), device: String::new() };
    let release = dir.join("release").display().to_string();
    world.keel(&["keys", "new", "--out", &release]);
    world.keel(&["keys", "add", &format!("{release}.pub"), "--name", "release"]);
    let fp = dir.join("dev.flash").display().to_string();
    let prov = world.keel(&[
        "device",
        "provision",
        "--flash",
        &fp,
        "--name",
        name,
        "--gateway-port",
        &gw.to_string(),
        "--signer-key",
        &format!("{release}.pub"),
    ]);
    world.device = prov["device"]["id"].as_str().unwrap().to_string();
    let v1 = elf::image_from_elf(&keel_vdev::app_elf("hello"), "1.0.0").unwrap();
    flash::program_app(&dir.join("dev.flash"), layout::APP_A, &v1).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: dir.join("dev.flash"), clock: Clock::Deterministic };
    Setup { world, server, dev, data, url, http, gw, token }
}

#[test]
fn updates_confirm_roll_back_refuse_and_resume() {
    let Setup { world, server, dev, data, url, http, gw, token } = setup("ota-e2e");
    let dir = world.dir.clone();
    let stranger = dir.join("stranger").display().to_string();
    world.keel(&["keys", "new", "--out", &stranger]);

    // A wrongly signed bundle is refused at upload, before anything is stored.
    let bad = dir.join("bad.keelb").display().to_string();
    let hello = keel_vdev::app_elf("hello").display().to_string();
    world.keel(&[
        "bundle",
        &hello,
        "--key",
        &format!("{stranger}.key"),
        "--version",
        "9",
        "--sequence",
        "9",
        "--out",
        &bad,
    ]);
    let e = keel_err(&["apps", "upload", &bad], &world.env());
    assert!(e.contains("sign"), "{e}");

    let v2 = world.ship("hello", "2.0.0", 2, &[]);
    let v3 = world.ship("crashy", "3.0.0", 3, &[]);
    let v4 = world.ship("hang", "4.0.0", 4, &[]);
    // Confirmation left to the app alone (grace 0), and this app never confirms.
    let v5 = world.ship("hello-c", "5.0.0", 5, &["--grace-s", "0"]);
    let old = world.ship("hello", "1.5.0", 1, &[]);
    let v6 = world.ship("hello", "6.0.0", 6, &[]);
    let v7 = world.ship("big", "7.0.0", 7, &[]);
    // Polite updates: the running app is told and applies it when it chooses (hello: at once),
    // or the visor applies it when the politeness time is over (big ignores the event).
    let v8 = world.ship("hello", "8.0.0", 8, &["--politeness-s", "30"]);
    let v9 = world.ship("hello", "9.0.0", 9, &["--politeness-s", "30"]);

    let mut qemu = dev.start().unwrap();

    // v2: downloaded, installed, run on trial, confirmed by the app.
    let mark = qemu.lines.len();
    world.deploy(&v2);
    let u = world.wait_state(&mut qemu, 2, "confirmed");
    assert_eq!(u["installed"], 2, "{u}");
    assert_eq!(world.keel(&["devices", "show", &world.device])["app_version"], "2.0.0", "registry follows the update");
    saw_since(&mut qemu, mark, "v2 runs", |l| l.contains("starting app 'hello' 2.0.0"));

    // v3 crashes, v4 hangs, v5 never confirms: each rolled back to v2, with the reason.
    for (bundle, seq, reason) in [(&v3, 3, "crash loop"), (&v4, 4, "watchdog"), (&v5, 5, "not confirmed in time")] {
        let mark = qemu.lines.len();
        world.deploy(bundle);
        let u = world.wait_state(&mut qemu, seq, "rolled_back");
        assert_eq!((u["reason"].as_str(), u["installed"].as_u64()), (Some(reason), Some(2)), "{u}");
        saw_since(&mut qemu, mark, "v2 again", |l| l.contains("starting app 'hello' 2.0.0"));
    }

    // A lower sequence than the installed one: refused by the device itself.
    world.deploy(&old);
    let u = world.wait_state(&mut qemu, 1, "refused");
    assert_eq!(u["reason"], "sequence not above the installed one", "{u}");

    // A layer tampered in the object store: the device checks the digest and keeps v2.
    let b6 = world.keel(&["apps", "list"]);
    let sha = b6.as_array().unwrap().iter().find(|b| b["id"] == v6.as_str()).unwrap()["layers"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = dir.join("data/objects/layers").join(&sha);
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[300] ^= 0x01;
    std::fs::write(&obj, bytes).unwrap();
    world.deploy(&v6);
    let u = world.wait_state(&mut qemu, 6, "error");
    assert_eq!(u["reason"], "layer digest mismatch", "{u}");
    assert_eq!(u["installed"], 2);

    // 256 KiB: the server crashes in the middle of the download; the download resumes.
    let mark = qemu.lines.len();
    world.deploy(&v7);
    let start = Instant::now();
    loop {
        let u = world.update();
        if u["sequence"] == 7 && u["progress"].as_u64().unwrap_or(0) >= 64 * 1024 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no progress: {u}");
        qemu.run_for(Duration::from_millis(20));
    }
    drop(server);
    let server = start_server(&data, http, gw, false);
    let u = world.wait_state(&mut qemu, 7, "confirmed");
    assert_eq!(u["installed"], 7, "{u}");
    let metrics = keel_api::Client::new(&url).with_token(&token).metrics().unwrap();
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keel_layer_bytes_served_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let size = world.keel(&["apps", "list"]).as_array().unwrap().iter().find(|b| b["id"] == v7.as_str()).unwrap()
        ["layers"][0]["size"]
        .as_u64()
        .unwrap();
    assert!(served < size - 60 * 1024, "the restarted server served {served} of {size} bytes: resumed, not restarted");
    saw_since(&mut qemu, mark, "v7 runs", |l| l.contains("big: update confirmed"));

    let mark = qemu.lines.len();
    world.deploy(&v8);
    world.wait_state(&mut qemu, 8, "confirmed");
    saw_since(&mut qemu, mark, "applied when the politeness time is over", |l| {
        l.contains("update: applying (politeness time over)")
    });
    let mark = qemu.lines.len();
    world.deploy(&v9);
    world.wait_state(&mut qemu, 9, "confirmed");
    saw_since(&mut qemu, mark, "applied by the app", |l| l.contains("update: applying (asked by the app)"));
    assert!(qemu.lines[mark..].iter().any(|l| l.contains("hello: an update is ready; applying it now")));
    let lines = qemu.kill();
    assert!(!lines.iter().any(|l| l.contains("FATAL") || l.contains("PANIC")));
    drop(server);

    // The device's own journal agrees.
    let s = flash::update_state(&dir.join("dev.flash")).unwrap();
    assert_eq!(s.installed_seq, 9);
}

/// Pulls the plug (`kill -9` of QEMU) at random moments while updates download, install, run
/// on trial and get confirmed, again and again. Every boot must start a valid app, and every
/// update must end installed. `KEEL_KILL_TRIALS` (default 20) sets how many kills,
/// `KEEL_KILL_SEED` the random seed (printed, to replay a failure).
#[test]
fn kill_9_at_random_moments_of_updates_always_comes_back() {
    let Setup { world, server, dev, .. } = setup("ota-kill");
    let trials: u32 = std::env::var("KEEL_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut seed: u64 = std::env::var("KEEL_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("kill -9 test: {trials} trials, KEEL_KILL_SEED={seed}");
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut next_seq = 2;
    let mut target = world.ship("big", "2.0.0", next_seq, &[]);
    world.deploy(&target);
    let mut installed_versions = Vec::new();
    let mut at_kill = std::collections::BTreeMap::new();
    for trial in 0..trials {
        let mut qemu = dev.start().unwrap();
        // Every boot runs a valid app (the visor checks header and digest before starting it).
        qemu.wait_for("an app starts", LIMIT, |l| l.contains("starting app '"))
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        qemu.run_for(Duration::from_millis(random() % 1200));
        let lines = qemu.kill();
        assert!(!lines.iter().any(|l| l.contains("FATAL") || l.contains("PANIC")), "trial {trial}: {lines:#?}");
        let u = world.update();
        let phase = u["state"].as_str().unwrap_or("none").to_string();
        *at_kill.entry(phase).or_insert(0u32) += 1;
        if u["state"] == "confirmed" && u["sequence"] == next_seq {
            installed_versions.push(next_seq);
            next_seq += 1;
            target = world.ship("big", &format!("{next_seq}.0.0"), next_seq, &[]);
            world.deploy(&target);
        }
    }
    // Power stays on now: the update in progress completes.
    let mut qemu = dev.start().unwrap();
    let u = world.wait_state(&mut qemu, next_seq, "confirmed");
    assert_eq!(u["installed"], next_seq, "{u}");
    qemu.kill();
    let s = flash::update_state(&dev.flash).unwrap();
    assert_eq!(s.installed_seq, next_seq);
    eprintln!(
        "kill -9 test: {trials} kills (update state last reported at each kill: {at_kill:?}); \
         installed along the way: {installed_versions:?}, then {next_seq}"
    );
    drop(server);
}
