#![allow(dead_code)]
//! A lab for the app connectivity tests: one `keel` server process, one provisioned QEMU device
//! running an app, and the CLI to configure both (`connect.rs`, `compat.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keel_flash::layout;
use keel_testpeers::TestCa;
use keel_vdev::qemu::{Clock, Device, Running};
use keel_vdev::{elf, flash};

use super::*;

/// One server, one provisioned QEMU device running an app.
pub struct Lab {
    env: Vec<(String, String)>,
    /// The lab's directory (server data, flash file, keys).
    pub dir: PathBuf,
    /// The device id.
    pub id: String,
    qemu: Option<Running>,
    flash: PathBuf,
    server_at: (String, u16, u16),
    server_env: Vec<(String, String)>,
    server: Option<Kill>,
}

impl Lab {
    /// Provisions a device under `target/<suite>/<name>` with `app` (version 1.0.0 in slot A);
    /// `server_env` goes to the server (its proxy CA, ...). The device is not started: configure
    /// it first, then [`Lab::boot`].
    pub fn new(suite: &str, name: &str, app: &Path, server_env: &[(&str, &str)]) -> Lab {
        let dir = keel_vdev::repo_root().join("target").join(suite).join(name);
        let server = TestServer::start(&dir, server_env);
        let flash_path = dir.join("dev.flash");
        let (id, _release) = server.provision(&dir, name, &flash_path);
        let img = elf::image_from_elf(app, "1.0.0").unwrap();
        flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
        Lab {
            env: server.env.clone(),
            dir,
            id,
            qemu: None,
            flash: flash_path,
            server_at: (server.data.clone(), server.http, server.gw),
            server_env: server_env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            server: Some(server.process),
        }
    }

    /// The CLI's environment (server, token).
    pub fn envr(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    /// `keel ARGS --json`.
    pub fn keel(&self, args: &[&str]) -> serde_json::Value {
        keel(args, &self.envr())
    }

    /// Signs `elf` as bundle `name` `version` (sequence `sequence`, `extra` arguments such as
    /// `--politeness-s`), uploads it and deploys it to the lab's device; returns the bundle id.
    pub fn deploy(&self, elf: &Path, name: &str, version: &str, sequence: u32, extra: &[&str]) -> String {
        let key = self.dir.join("release.key").display().to_string();
        let out = self.dir.join(format!("{name}-{version}.keelb")).display().to_string();
        let elf = elf.display().to_string();
        let seq = sequence.to_string();
        let mut args = vec!["bundle", &elf, "--key", &key, "--version", version, "--sequence", &seq, "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", &out]);
        self.keel(&args);
        let bundle = self.keel(&["apps", "upload", &out])["id"].as_str().unwrap().to_string();
        self.keel(&["deploy", &bundle, "--device", &self.id]);
        bundle
    }

    /// `keel config set KEY VALUE` for any value (a PEM starting with `-----` too).
    pub fn config(&self, key: &str, value: &str) {
        self.keel(&["config", "set", key, value]);
    }

    /// `keel secrets set KEY` with the value on standard input (as a user would).
    pub fn secret(&self, key: &str, value: &str, device: Option<&str>) {
        use std::io::Write;
        let mut args = vec!["secrets", "set", key, "--json"];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        let mut child = Command::new(KEEL)
            .args(&args)
            .envs(self.envr())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "keel secrets set: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the device and waits until it is online.
    pub fn boot(&mut self) {
        self.boot_with(Clock::RealTime);
    }

    /// [`Lab::boot`] with the virtual clock `clock`.
    pub fn boot_with(&mut self, clock: Clock) {
        let dev = Device { visor: keel_vdev::visor_elf(), flash: self.flash.clone(), clock };
        self.qemu = Some(dev.start().unwrap());
        self.wait("the link", "net: online");
    }

    /// The running device.
    pub fn qemu(&mut self) -> &mut Running {
        self.qemu.as_mut().expect("booted")
    }

    /// Waits for a console line containing `needle`; returns it. Fails with the console's last
    /// lines.
    pub fn wait(&mut self, what: &str, needle: &str) -> String {
        self.qemu().wait_for(what, LIMIT, |l| l.contains(needle)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Lab::wait`] for a line the app may print before the link is up: one the console
    /// already showed counts too ([`Lab::boot`] passed over the lines before `net: online`).
    pub fn wait_or_seen(&mut self, what: &str, needle: &str) -> String {
        if let Some(line) = self.qemu().console_so_far().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.wait(what, needle)
    }

    /// Waits for `<app>: PASS` (returned) and fails at once on `<app>: FAIL`, with the
    /// console's last lines.
    pub fn pass(&mut self, app: &str) -> String {
        let pass = format!("{app}: PASS");
        let fail = format!("{app}: FAIL");
        let line = self
            .qemu()
            .wait_for(&format!("{pass} (or FAIL)"), LIMIT, |l| l.contains(&pass) || l.contains(&fail))
            .unwrap_or_else(|e| panic!("{e}"));
        if line.contains(&fail) {
            panic!("{line}\nconsole:\n{}", self.tail(60));
        }
        line
    }

    /// The last `n` console lines.
    pub fn tail(&mut self, n: usize) -> String {
        let lines = self.qemu().console_so_far();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Kills the server (like a crash) and starts it again on the same data and ports.
    pub fn restart_server(&mut self) {
        drop(self.server.take());
        let (data, http, gw) = self.server_at.clone();
        let env: Vec<(&str, &str)> = self.server_env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        self.server = Some(start_server_with(&data, http, gw, false, &env));
    }
}

/// The test CA's PEM in a file under `target/<suite>`, for the server's `KEEL_PROXY_CA`.
pub fn ca_file(suite: &str, ca: &TestCa, name: &str) -> String {
    let dir = keel_vdev::repo_root().join("target").join(suite);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&p, &ca.cert_pem).unwrap();
    p.display().to_string()
}
