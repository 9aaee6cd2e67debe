//! Scratch: the debug agent through the relay, without gdb.
use std::time::Duration;

use keel_debug::session::{public_key, Client as Session, Refusal, MAX_FRAME};
use keel_debug::wire::{Event, Op, OpResult, Request, Results, MAX_MESSAGE, PC};
use keel_flash::layout;
use keel_vdev::qemu::{Clock, Device};
use keel_vdev::{elf, flash};
use rand_core::OsRng;

mod common;
use common::*;

#[test]
fn smoke() {
    let dir = keel_vdev::repo_root().join("target/debug-e2e/smoke");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data").display().to_string();
    let token = keel(&["server", "init", "--data", &data], &[])["token"].as_str().unwrap().to_string();
    let (http, gw) = (free_port(), free_port());
    let _server = start_server(&data, http, gw, false);
    let url = format!("http://127.0.0.1:{http}");
    let env = [("KEEL_SERVER", url.as_str()), ("KEEL_TOKEN", token.as_str())];
    let flash_path = dir.join("dev.flash");
    let fp = flash_path.display().to_string();
    let prov = keel(&["device", "provision", "--flash", &fp, "--gateway-port", &gw.to_string()], &env);
    let id = prov["device"]["id"].as_str().unwrap().to_string();
    let secret = [42u8; 32];
    let elf_path = keel_vdev::app_elf("debuggee");
    let img = elf::image_from_elf(&elf_path, "1.0.0").unwrap().with_debug_key(Some(public_key(&secret)));
    flash::program_app(&flash_path, layout::APP_A, &img).unwrap();
    let dev = Device { visor: keel_vdev::visor_elf(), flash: flash_path, clock: Clock::RealTime };
    let mut qemu = dev.start().unwrap();
    qemu.wait_for("online", LIMIT, |l| l.contains("net: online")).unwrap();
    qemu.wait_for("tick", LIMIT, |l| l.contains("debuggee: tick=")).unwrap();

    let api = keel_api::Client::new(&url).with_token(&token);
    let d = api.device(&id).unwrap();
    let dk: [u8; 32] = keel_server::unhex(&d.public_key).unwrap().try_into().unwrap();
    let mut s = Session::<OsRng>::new(&secret, &dk).unwrap();
    let mut sock = api.debug_socket(&id).unwrap();
    let mut f = [0u8; MAX_FRAME];
    let n = s.start(0, &mut f).unwrap();
    sock.send(&f[..n]).unwrap();
    let reply = sock.recv(Duration::from_secs(10)).unwrap().expect("handshake answer");
    assert!(Refusal::parse(&reply).is_none(), "refused {:?}", Refusal::parse(&reply));
    let mut plain = [0u8; MAX_FRAME];
    let n = s.open(&reply, &mut plain).unwrap();
    eprintln!("hello: {:?}", Event::decode(&plain[..n]));
    let mut id_ = 1u16;
    let mut req = |s: &mut Session<OsRng>, sock: &mut keel_api::DebugSocket, ops: &[Op<'_>]| -> Vec<String> {
        let mut p = [0u8; MAX_MESSAGE];
        let n = Request::encode(id_, ops, &mut p).unwrap();
        id_ += 1;
        let mut f = [0u8; MAX_FRAME];
        let m = s.seal(&p[..n], &mut f).unwrap();
        sock.send(&f[..m]).unwrap();
        let mut out = Vec::new();
        loop {
            let fr = sock.recv(Duration::from_secs(10)).unwrap().expect("an answer");
            let mut plain = [0u8; MAX_FRAME];
            let n = s.open(&fr, &mut plain).unwrap();
            match Event::decode(&plain[..n]).unwrap() {
                Event::Reply { results, .. } => {
                    let mut r = Results::new(results);
                    for op in ops {
                        out.push(format!("{:?}", r.next(op).unwrap()));
                    }
                    return out;
                }
                e => eprintln!("event: {e:?}"),
            }
        }
    };
    let wait_stop = |s: &mut Session<OsRng>, sock: &mut keel_api::DebugSocket| loop {
        let fr = sock.recv(Duration::from_secs(10)).unwrap().expect("an event");
        let mut plain = [0u8; MAX_FRAME];
        let n = s.open(&fr, &mut plain).unwrap();
        let e = Event::decode(&plain[..n]).unwrap();
        eprintln!("event: {e:?}");
        if let Event::Stop(st) = e {
            return st;
        }
    };
    eprintln!("{:?}", req(&mut s, &mut sock, &[Op::Halt]));
    let st = wait_stop(&mut s, &mut sock);
    eprintln!("halted at pc={:#x}", st.regs[PC]);
    let scaled = elf::symbol_address(&elf_path, "scaled").unwrap().unwrap() as u32 & !1;
    eprintln!("{:?}", req(&mut s, &mut sock, &[Op::SetBreak { addr: scaled, temporary: false }, Op::Resume]));
    let st = wait_stop(&mut s, &mut sock);
    assert_eq!(st.regs[PC], scaled, "stopped at scaled");
    eprintln!("{:?}", req(&mut s, &mut sock, &[Op::ReadMem { addr: scaled, len: 8 }, Op::ReadRegs]));
    eprintln!("{:?}", req(&mut s, &mut sock, &[Op::Detach]));
    qemu.wait_for("tick after", LIMIT, |l| l.contains("debuggee: tick=")).unwrap();
    let _ = OpResult::Ok(&[]);
    for l in qemu.kill() {
        eprintln!("{l}");
    }
}
