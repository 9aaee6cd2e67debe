//! `cargo xtask qemu` and `cargo xtask demo`: virtual devices for people to watch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device};
use keel_vdev::{elf, flash};

use crate::build;

/// Creates the flash file if needed and programs `app` (if given) into app slot A.
pub fn prepare_device(flash_path: &Path, app: Option<&str>) -> Result<(), String> {
    if let Some(dir) = flash_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    if !flash_path.exists() {
        let f = flash::new_factory().map_err(|e| e.to_string())?;
        flash::create(flash_path, &f).map_err(|e| e.to_string())?;
        eprintln!(
            "xtask: new virtual device {} ({})",
            String::from_utf8_lossy(&f.device_id_ascii()),
            flash_path.display()
        );
    }
    if let Some(app) = app {
        let elf_path = keel_vdev::app_elf(app);
        let image = elf::image_from_elf(&elf_path, env!("CARGO_PKG_VERSION"))
            .map_err(|e| format!("{}: {e}", elf_path.display()))?;
        flash::program_app(flash_path, layout::APP_A, &image).map_err(|e| e.to_string())?;
        eprintln!("xtask: programmed '{}' ({} bytes) into slot {}", app, image.image.len(), layout::APP_A.name);
    }
    Ok(())
}

fn usage(msg: &str) -> String {
    format!("{msg}\nusage: cargo xtask qemu --app NAME [--seconds N] [--device FILE] [--deterministic]\napps: hello, hello-c, crashy, hang, evil, bench")
}

/// `cargo xtask qemu`.
pub fn qemu(args: &[String]) -> Result<(), String> {
    let mut app = None;
    let mut seconds = None;
    let mut device = None;
    let mut clock = Clock::RealTime;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--app" => app = Some(it.next().ok_or_else(|| usage("--app needs a name"))?.clone()),
            "--seconds" => {
                let v = it.next().ok_or_else(|| usage("--seconds needs a number"))?;
                seconds = Some(v.parse::<u64>().map_err(|_| usage(&format!("--seconds: '{v}' is not a number")))?);
            }
            "--device" => device = Some(PathBuf::from(it.next().ok_or_else(|| usage("--device needs a file"))?)),
            "--deterministic" => clock = Clock::Deterministic,
            other => return Err(usage(&format!("unknown option '{other}'"))),
        }
    }
    if app.is_none() && device.is_none() {
        return Err(usage("say which app to run (--app) or which device to boot (--device)"));
    }
    if let Some(a) = &app {
        if !["hello", "hello-c", "crashy", "hang", "evil", "bench"].contains(&a.as_str()) {
            return Err(usage(&format!("unknown app '{a}'")));
        }
    }
    build::all()?;
    let flash_path = device
        .unwrap_or_else(|| build::root().join(format!("target/devices/{}.flash", app.as_deref().unwrap_or("device"))));
    prepare_device(&flash_path, app.as_deref())?;
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock };
    let mut running = dev.start().map_err(|e| e.to_string())?;
    running.echo = true;
    running.run_for(seconds.map_or(Duration::from_secs(u64::MAX / 4), Duration::from_secs));
    running.kill();
    Ok(())
}

/// Kills a child process when dropped.
pub(crate) struct Kill(pub(crate) std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn keel_json(keel: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = std::process::Command::new(keel)
        .args(args)
        .arg("--json")
        .envs(env.iter().copied())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("keel {}: {}", args.join(" "), String::from_utf8_lossy(&out.stdout)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn json_field(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(json[at..].split('"').next()?.to_string())
}

/// `cargo xtask demo`.
pub fn demo() -> Result<(), String> {
    use std::io::BufRead;
    build::all()?;
    crate::sh(crate::cargo().current_dir(build::root()).args(["build", "-q", "-p", "keel-cli"]))?;
    let keel = build::root().join("target/debug/keel");
    let dir = build::root().join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let data = dir.join("data").display().to_string();
    let flash_path = dir.join("device.flash");

    println!("\n=== Keel demo 1/7: a self-hosted server, a provisioned device, its logs streamed live ===\n");
    let init = keel_json(&keel, &["server", "init", "--data", &data], &[])?;
    let token = json_field(&init, "token").ok_or("no token from `keel server init`")?;
    let mut server = Kill(
        std::process::Command::new(&keel)
            .args(["server", "run", "--data", &data, "--http", "127.0.0.1:7447", "--gateway", "127.0.0.1:7448"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let mut ready = String::new();
    let stderr = server.0.stderr.take().ok_or("no server output")?;
    std::io::BufReader::new(stderr).read_line(&mut ready).map_err(|e| e.to_string())?;
    print!("$ keel server run\n{ready}");
    let env = [("KEEL_SERVER", "http://127.0.0.1:7447"), ("KEEL_TOKEN", token.as_str())];
    let key = dir.join("release").display().to_string();
    keel_json(&keel, &["keys", "new", "--out", &key], &env)?;
    keel_json(&keel, &["keys", "add", &format!("{key}.pub"), "--name", "release"], &env)?;
    println!("$ keel keys new --out release && keel keys add release.pub --name release");
    let fp = flash_path.display().to_string();
    let pubkey = format!("{key}.pub");
    let prov =
        keel_json(&keel, &["device", "provision", "--flash", &fp, "--name", "demo-1", "--signer-key", &pubkey], &env)?;
    let id = json_field(&prov, "id").ok_or("no device id")?;
    println!("$ keel device provision --flash {fp} --name demo-1 --signer-key release.pub\nprovisioned {id}");
    prepare_device(&flash_path, Some("hello"))?;
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path.clone(), clock: Clock::RealTime };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    println!("\n$ keel logs {id} --follow   (the device boots in QEMU meanwhile)");
    let mut follow = Kill(
        std::process::Command::new(&keel)
            .args(["logs", &id, "--follow"])
            .envs(env)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    r.run_for(Duration::from_secs(5));
    let _ = follow.0.kill();
    println!("\n$ keel devices");
    let _ = std::process::Command::new(&keel).arg("devices").envs(env).status();
    r.kill();
    drop(follow);

    println!("\n=== Keel demo 2/7: 'crashy' faults; the visor reports the crash and restarts it with backoff ===\n");
    prepare_device(&flash_path, Some("crashy"))?;
    let dev = Device { clock: Clock::Deterministic, ..dev };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.echo = true;
    let restarts = |l: &str| l.contains("starting app 'crashy'") && l.contains("restarts=3");
    r.wait_for("third restart", Duration::from_secs(60), restarts).map_err(|e| e.to_string())?;
    if !r.lines.iter().any(|l| l.contains("net: online")) {
        r.wait_for("online", Duration::from_secs(60), |l| l.contains("net: online")).map_err(|e| e.to_string())?;
    }
    r.run_for(Duration::from_millis(500));
    r.kill();
    println!("\n$ keel logs {id}   (crash reports and boots, as stored by the server)");
    let out = std::process::Command::new(&keel).args(["logs", &id]).envs(env).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("crash") || l.contains("boot #")).collect();
    for l in lines.iter().rev().take(6).rev() {
        println!("{l}");
    }

    println!("\n=== Keel demo 3/7: over-the-air updates: v1 -> v2 confirmed, a crashing v3 rolled back ===\n");
    prepare_device(&flash_path, Some("hello"))?;
    let ship = |app: &str, version: &str, seq: &str| -> Result<String, String> {
        let out = dir.join(format!("{app}-{version}.keelb")).display().to_string();
        let elf = keel_vdev::app_elf(app).display().to_string();
        let k = format!("{key}.key");
        keel_json(
            &keel,
            &["bundle", &elf, "--key", &k, "--version", version, "--sequence", seq, "--name", "hello", "--out", &out],
            &env,
        )?;
        let up = keel_json(&keel, &["apps", "upload", &out], &env)?;
        println!(
            "$ keel bundle {app}.elf --key release.key --version {version} && keel apps upload {app}-{version}.keelb"
        );
        json_field(&up, "id").ok_or_else(|| "no bundle id".to_string())
    };
    let v2 = ship("hello", "2.0.0", "2")?;
    let v3 = ship("crashy", "3.0.0", "3")?;
    let mut r = dev.start().map_err(|e| e.to_string())?;
    r.wait_for("online", Duration::from_secs(60), |l| l.contains("net: online")).map_err(|e| e.to_string())?;
    let show = |r: &mut keel_vdev::qemu::Running, mark: usize| {
        for l in &r.lines[mark..] {
            if l.contains("update:") || l.contains("starting app") || l.contains("app crash: ") && !l.contains("stack")
            {
                println!("  device | {l}");
            }
        }
    };
    for (bundle, version, done) in
        [(&v2, "2.0.0", "update: confirmed seq 2"), (&v3, "3.0.0", "update: rolled back seq 3")]
    {
        println!("\n$ keel deploy {bundle} --device {id}   (hello {version})");
        keel_json(&keel, &["deploy", bundle, "--device", &id], &env)?;
        let mark = r.lines.len();
        r.wait_for(done, Duration::from_secs(120), |l| l.contains(done)).map_err(|e| e.to_string())?;
        r.run_for(Duration::from_millis(300));
        show(&mut r, mark);
    }
    r.kill();
    // The visor reports update outcomes as typed events (sequence, state, reason code); the server
    // renders them. Check that the rollback arrived that way.
    println!("\n$ keel logs {id}   (update events, as the device core reported them)");
    let out = std::process::Command::new(&keel).args(["logs", &id]).envs(env).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let updates: Vec<&str> = text.lines().filter(|l| l.contains("update 2:") || l.contains("update 3:")).collect();
    for l in &updates {
        println!("{l}");
    }
    if !updates.iter().any(|l| l.contains("update 3: rolled_back (crash loop)")) {
        return Err("the rollback of v3 did not reach the server as an update event".into());
    }
    println!("\n$ keel devices show {id}");
    let _ = std::process::Command::new(&keel).args(["devices", "show", &id]).envs(env).status();

    println!(
        "\n=== Keel demo 4/7: a hostile app forges an exception return at every start to reset-loop the device;\n\
         the visor records each crash, quarantines the app after three, and an update replaces it ===\n"
    );
    // A second device whose factory app is the hostile one, in its 'exc-s1' mode: an SVCall
    // handler that returns with EXC_RETURN.S = 1 (two instructions), which reset-looped devices
    // before the visor learned to tell the app's faults from its own.
    let flash2 = dir.join("device2.flash");
    let fp2 = flash2.display().to_string();
    let prov2 =
        keel_json(&keel, &["device", "provision", "--flash", &fp2, "--name", "demo-2", "--signer-key", &pubkey], &env)?;
    let id2 = json_field(&prov2, "id").ok_or("no device id")?;
    println!("$ keel device provision --flash {fp2} --name demo-2   (factory app: hostile, mode exc-s1)");
    let elf = keel_vdev::hostile_elf("exc-s1")?;
    let image = keel_vdev::elf::image_from_elf_bytes(&elf, "hostile", "1.0.0").map_err(|e| e.to_string())?;
    flash::program_app(&flash2, layout::APP_A, &image).map_err(|e| e.to_string())?;
    let v4 = ship("hello", "4.0.0", "4")?;
    let dev2 = Device { visor: keel_vdev::visor_elf(), flash: flash2.clone(), clock: Clock::RealTime };
    let mut r = dev2.start().map_err(|e| e.to_string())?;
    let q = "app: quarantined after 3 crashes in a row";
    r.wait_for(q, Duration::from_secs(120), |l| l.contains(q)).map_err(|e| e.to_string())?;
    println!("$ keel deploy {v4} --device {id2}   (while the device is in its reset loop)");
    keel_json(&keel, &["deploy", &v4, "--device", &id2], &env)?;
    let done = "update: confirmed seq 4";
    r.wait_for(done, Duration::from_secs(180), |l| l.contains(done)).map_err(|e| e.to_string())?;
    r.run_for(Duration::from_millis(300));
    let mut quarantined = false;
    for l in &r.lines {
        if l.contains("app crash: ") && !l.contains("stack")
            || l.contains("hostile: attack")
            || l.contains("warm reset:")
            || l.contains("quarantine")
            || l.contains("update:")
            || l.contains("starting app")
            || l.contains("FATAL")
        {
            println!("  device | {l}");
        }
        quarantined |= l.contains("app: quarantined after 3 crashes in a row");
    }
    r.kill();
    if !quarantined {
        return Err("the hostile app was not quarantined".into());
    }
    println!("\n$ keel devices show {id2}");
    let _ = std::process::Command::new(&keel).args(["devices", "show", &id2]).envs(env).status();
    server_under_abuse(&keel, &env, "127.0.0.1:7447", &v4, &id2)?;
    remote_debugging(&keel, &env, &dir, &flash_path, &id)?;
    app_connectivity(&keel, &env, &dir, &flash_path, &id)?;
    drop(server);
    println!(
        "\nThe device's flash file is {} (boot it again: cargo xtask qemu --device {}).",
        flash_path.display(),
        flash_path.display()
    );
    Ok(())
}

/// Demo part 5: what an attacker without a credential gets from the server, and what a token
/// with too little scope gets.
fn server_under_abuse(keel: &Path, env: &[(&str, &str)], http: &str, bundle: &str, device: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    println!(
        "\n=== Keel demo 5/7: the server holds under abuse: nothing unbounded before authentication, \
         slow clients closed, scoped tokens ===\n"
    );
    // An unauthenticated 60 MB upload is answered before its body is read.
    let mut s = TcpStream::connect(http).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let head = "POST /v1/bundles HTTP/1.1\r\nHost: keel\r\nContent-Type: application/octet-stream\r\n\
                Content-Length: 62914560\r\n\r\n";
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = [0u8; 512];
    let n = s.read(&mut answer).map_err(|e| format!("no answer to an unauthenticated upload: {e}"))?;
    let status = String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default().to_string();
    println!("unauthenticated upload announcing 60 MB, 0 bytes of body sent -> {status}");
    if !status.contains(" 401 ") {
        return Err(format!("an unauthenticated upload was answered {status:?}, not 401"));
    }
    // A slowloris client (a header byte every second) is closed by the server.
    let mut s = TcpStream::connect(http).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(10))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /v1/devices HTTP/1.1\r\nHost: keel\r\nX-Slow: ").map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let closed = loop {
        if t.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut b = [0u8; 512];
        match s.read(&mut b) {
            Ok(0) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
            Ok(_) => {}
        }
        if s.write_all(b"a").is_err() {
            break true;
        }
    };
    if !closed {
        return Err("a slowloris client was still connected after 60 s".into());
    }
    println!("slowloris client (one header byte per second) -> closed by the server after {} s", t.elapsed().as_secs());
    // A token's scope is enforced: a read-only token can look but not deploy.
    let created = keel_json(keel, &["token", "create", "demo-viewer", "--scope", "read", "--expires", "1d"], env)?;
    let viewer = json_field(&created, "token").ok_or("no token from `keel token create`")?;
    println!("$ keel token create demo-viewer --scope read --expires 1d");
    let env_viewer: Vec<(&str, &str)> =
        env.iter().map(|&(k, v)| if k == "KEEL_TOKEN" { (k, viewer.as_str()) } else { (k, v) }).collect();
    let out = std::process::Command::new(keel)
        .args(["deploy", bundle, "--device", device, "--json"])
        .envs(env_viewer.iter().copied())
        .output()
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    println!("$ KEEL_TOKEN=<demo-viewer> keel deploy {bundle} --device {device} --json\n{}", answer.trim());
    if out.status.success() || json_field(&answer, "code").as_deref() != Some("insufficient_scope") {
        return Err(format!("a read-only token was not refused a deploy: {answer}"));
    }
    Ok(())
}

/// Runs `keel ARGS` in the background until it prints its first line (a listening address);
/// returns the process and the port.
fn serve_gdb(keel: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(Kill, String), String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(keel)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no output")?;
    std::io::BufReader::new(out).read_line(&mut line).map_err(|e| e.to_string())?;
    println!("$ keel {}\n{}", args.join(" "), line.trim());
    let port = line.trim().rsplit(':').next().unwrap_or_default().to_string();
    Ok((Kill(child), port))
}

/// Runs gdb-multiarch in batch mode on `elf` with `commands`; prints and returns its output.
fn gdb_batch(elf: &Path, port: &str, commands: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new("gdb-multiarch");
    cmd.args(["-nx", "-q", "-batch", "-ex", "set pagination off"]).arg(elf);
    cmd.args(["-ex", &format!("target extended-remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    println!(
        "$ gdb-multiarch {} -ex 'target extended-remote :{port}' -ex '{}'",
        elf.display(),
        commands.join("' -ex '")
    );
    let out = cmd.output().map_err(|e| format!("gdb-multiarch: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("  gdb | {l}");
    }
    Ok(text)
}

/// Demo part 6: remote debugging with stock gdb through the server, end-to-end encrypted, and a
/// crash from part 2 opened post mortem.
fn remote_debugging(keel: &Path, env: &[(&str, &str)], dir: &Path, flash_path: &Path, id: &str) -> Result<(), String> {
    println!(
        "\n=== Keel demo 6/7: gdb on the device through the server (end-to-end encrypted), and a crash \
         from the field opened in gdb ===\n"
    );
    let dbg = dir.join("dev").display().to_string();
    let keys = keel_json(keel, &["keys", "new", "--debug", "--out", &dbg], env)?;
    let public = json_field(&keys, "public_key").ok_or("no debug key")?;
    println!("$ keel keys new --debug --out dev   (dev.debug.key stays here; dev.debug.pub goes in the bundle)");
    if public.len() != 64 {
        return Err("no debug public key from `keel keys new --debug`".into());
    }
    // The app to debug ships like any update, with the debug key in its signed bundle.
    let elf_path = keel_vdev::app_elf("debuggee");
    let elf_s = elf_path.display().to_string();
    let bundle = dir.join("debuggee-5.0.0.keelb").display().to_string();
    let release = dir.join("release.key").display().to_string();
    let debug_pub = format!("{dbg}.debug.pub");
    let args = ["bundle", &elf_s, "--key", &release, "--version", "5.0.0", "--sequence", "5"];
    let args: Vec<&str> =
        args.into_iter().chain(["--debug-key", &debug_pub, "--grace-s", "10", "--out", &bundle]).collect();
    keel_json(keel, &args, env)?;
    let up = keel_json(keel, &["apps", "upload", &bundle], env)?;
    let bn = json_field(&up, "id").ok_or("no bundle id")?;
    keel_json(keel, &["deploy", &bn, "--device", id], env)?;
    println!("$ keel bundle debuggee.elf --key release.key --version 5.0.0 --debug-key dev.debug.pub --grace-s 10");
    println!("$ keel apps upload debuggee-5.0.0.keelb && keel deploy {bn} --device {id}");
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path.to_path_buf(), clock: Clock::RealTime };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    let started = "starting app 'debuggee'";
    r.wait_for(started, Duration::from_secs(120), |l| l.contains(started)).map_err(|e| e.to_string())?;
    r.wait_for("app", Duration::from_secs(60), |l| l.contains("debuggee: tick=")).map_err(|e| e.to_string())?;
    println!("  device | (installed, running) {}", r.lines.last().map(String::as_str).unwrap_or_default());
    let key = format!("{dbg}.debug.key");
    let (server, port) = serve_gdb(keel, &["debug", id, "--key", &key, "--elf", &elf_s, "--port", "0"], env)?;
    let out = gdb_batch(
        &elf_path,
        &port,
        &["break scaled", "continue", "bt", "print x", "set var debuggee::SCALE.v.value = 7", "finish", "detach"],
    )?;
    drop(server);
    if !out.contains("Breakpoint 1, ") || !out.contains("debuggee::main") || !out.contains("Value returned") {
        return Err("the gdb session did not break in scaled() and finish it".into());
    }
    // The next lines use the scale gdb set: value = tick * 7 + 1000.
    let scaled_by_7 = |l: &str| {
        let num = |key: &str| l.split(key).nth(1)?.split(' ').next()?.parse::<u64>().ok();
        matches!((num("tick="), num("value=")), (Some(t), Some(v)) if v == t * 7 + 1000)
    };
    let seven = r.wait_for("scale 7", Duration::from_secs(30), scaled_by_7).map_err(|e| e.to_string())?;
    println!("  device | {seven}   (the app runs on, with the scale gdb set)");
    r.kill();

    // Part 2's crashy crashes were stored with their registers and stack.
    println!("\n$ keel crash list {id} | head -3");
    let out = std::process::Command::new(keel).args(["crash", "list", id]).envs(env.iter().copied()).output();
    let list = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    for l in list.lines().take(3) {
        println!("{l}");
    }
    let crashy = keel_vdev::app_elf("crashy");
    let crashy_s = crashy.display().to_string();
    let (server, port) =
        serve_gdb(keel, &["crash", "show", id, "--last", "--gdb", "--elf", &crashy_s, "--port", "0"], env)?;
    let out = gdb_batch(&crashy, &port, &["bt", "info registers pc sp lr"])?;
    drop(server);
    if !out.contains("crashy_fault_insn") && !out.contains("crashy_do_fault") {
        return Err("the post-mortem backtrace does not show the faulting function".into());
    }
    Ok(())
}

/// Demo part 7: configuration and a secret set with the CLI reach the app through the visor's
/// channel to the server (the same path HTTP requests and MQTT sessions take).
fn app_connectivity(keel: &Path, env: &[(&str, &str)], dir: &Path, flash_path: &Path, id: &str) -> Result<(), String> {
    println!(
        "\n=== Keel demo 7/7: the app reaches the cloud through the visor's link: config and a secret set \
         with the CLI reach it over a channel, and the server counts it ===\n"
    );
    keel_json(keel, &["config", "set", "greeting", "hello-from-the-server"], env)?;
    keel_json(keel, &["config", "set", "site", "demo-lab", "--device", id], env)?;
    let mut child = std::process::Command::new(keel)
        .args(["secrets", "set", "api-key", "--json"])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"not-for-your-eyes").map_err(|e| e.to_string())?;
    }
    if !child.wait().map_err(|e| e.to_string())?.success() {
        return Err("keel secrets set failed".into());
    }
    println!("$ keel config set greeting hello-from-the-server");
    println!("$ keel config set site demo-lab --device {id}");
    println!("$ keel secrets set api-key   (the value from standard input; it is encrypted at rest and never shown)");
    let elf = keel_vdev::app_elf("config-demo").display().to_string();
    let bundle = dir.join("config-demo-6.0.0.keelb").display().to_string();
    let release = dir.join("release.key").display().to_string();
    let args = ["bundle", &elf, "--key", &release, "--version", "6.0.0", "--sequence", "6", "--out", &bundle];
    keel_json(keel, &args, env)?;
    let up = keel_json(keel, &["apps", "upload", &bundle], env)?;
    let bn = json_field(&up, "id").ok_or("no bundle id")?;
    keel_json(keel, &["deploy", &bn, "--device", id], env)?;
    println!("$ keel bundle config-demo.elf ... && keel apps upload ... && keel deploy {bn} --device {id}");
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path.to_path_buf(), clock: Clock::RealTime };
    let mut r = dev.start().map_err(|e| e.to_string())?;
    let line =
        r.wait_for("the values", Duration::from_secs(120), |l| l.contains("config-demo: greeting=")).map_err(|e| {
            // The visor's side of the story (the app's lines are in the error already).
            let visor: Vec<&String> = r.lines.iter().filter(|l| l.contains(" visor] ")).collect();
            format!("{e}\nvisor lines:\n{}", visor.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n"))
        })?;
    println!("  device | {line}");
    r.wait_for("success", Duration::from_secs(30), |l| l.contains("config-demo: PASS")).map_err(|e| e.to_string())?;
    r.kill();
    if !line.contains("greeting=hello-from-the-server") || !line.contains("site=demo-lab") {
        return Err("the app did not get the values set with the CLI".into());
    }
    println!("\n$ keel secrets list");
    let _ = std::process::Command::new(keel).args(["secrets", "list"]).envs(env.iter().copied()).status();
    // The server counts what its app services did (for Prometheus).
    let token = env.iter().find(|(k, _)| *k == "KEEL_TOKEN").map(|(_, v)| *v).ok_or("no token")?;
    let metrics = http_get_text("127.0.0.1:7447", "/metrics", token)?;
    println!("\n$ curl -H 'Authorization: Bearer ...' http://127.0.0.1:7447/metrics | grep channel");
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("keel_channel")).collect();
    for l in &lines {
        println!("{l}");
    }
    let opens = lines
        .iter()
        .find_map(|l| l.strip_prefix("keel_channel_opens_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if opens == 0 {
        return Err("the server's metrics show no channel opened".into());
    }
    Ok(())
}

/// `GET path` with a bearer token over plain HTTP/1.1; the body as text.
fn http_get_text(addr: &str, path: &str, token: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("GET {path}: {}", text.lines().next().unwrap_or("no answer"))),
    }
}
