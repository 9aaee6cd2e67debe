//! The update agent against signed bundles: what a device does with the server's offers and data.

mod common;

use common::*;
use keel_bundle::{build_bundle, split_bundle, BundleSpec, LayerSpec, Policies, SigningKey, Target};
use keel_flash::sim::{CutMode, SimFlash};
use keel_flash::Nor;
use keel_update::agent::{Agent, Next, State, FETCH_LEN};
use keel_update::{Reason, Slot};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// (envelope without payloads, app layer) of a bundle signed by `k`.
fn bundle(k: &SigningKey, seq: u64, layer: &[u8], policies: Policies<'_>) -> (Vec<u8>, Vec<u8>) {
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: layer }];
    let spec = BundleSpec { sequence: seq, layers: &layers, policies };
    let b = build_bundle(&spec, k, |_| Some(SLOT_A.size)).unwrap();
    let split = split_bundle(&b).unwrap();
    (split.envelope, split.layers[0].bytes.clone())
}

fn trusted() -> [[u8; 32]; 1] {
    [key(1).verifying_key().to_bytes()]
}

/// Serves `Fetch` requests from `layer` until the agent says something else; returns it and how
/// many bytes were fetched.
fn serve(agent: &mut Agent, f: &mut Nor<SimFlash>, first: Next, layer: &[u8], stop_after: Option<u32>) -> (Next, u32) {
    let up = updater();
    let mut next = first;
    let mut fetched = 0;
    while let Next::Fetch { sequence, offset, len, .. } = next {
        assert!(len <= FETCH_LEN);
        if stop_after.is_some_and(|s| fetched >= s) {
            return (next, fetched);
        }
        let end = (offset + len) as usize;
        next = Next::None;
        for (i, chunk) in layer[offset as usize..end].chunks(900).enumerate() {
            let at = offset + (i * 900) as u32;
            next = agent.on_data(&up, f, sequence, at, chunk);
            fetched += chunk.len() as u32;
        }
    }
    (next, fetched)
}

#[test]
fn a_signed_offer_is_downloaded_page_by_page_and_installed_for_trial() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, layer) = bundle(&key(1), 2, &image("2", 30_000), Policies::default());
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(first, Next::Fetch { sequence: 2, component: 0, offset: 0, len: FETCH_LEN });
    let s = agent.status(&up, &f);
    assert_eq!((s.state, s.sequence, s.total), (State::Downloading, 2, layer.len() as u32));
    let (last, fetched) = serve(&mut agent, &mut f, first, &layer, None);
    assert_eq!((last, fetched), (Next::Installed, layer.len() as u32));
    assert_eq!(agent.status(&up, &f).state, State::Trial);
    assert!(up.boot(&mut f).unwrap().trial);
    assert_eq!(version_in(&up, &f, Slot::B).as_deref(), Some("2"));
}

#[test]
fn offers_that_are_not_trusted_newer_or_for_this_visor_are_refused() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let v2 = image("2", 3000);
    let mut agent = Agent::new();
    // Signed by a key the device does not trust.
    let (env, _) = bundle(&key(9), 2, &v2, Policies::default());
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::None);
    let s = agent.status(&up, &f);
    assert_eq!((s.state, s.reason), (State::Refused, Some(Reason::BadManifest)));
    // Tampered envelope.
    let (mut env, _) = bundle(&key(1), 2, &v2, Policies::default());
    let n = env.len();
    env[n / 2] ^= 0x40;
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::None);
    assert_eq!(agent.status(&up, &f).reason, Some(Reason::BadManifest));
    // Needs a newer visor.
    let p = Policies { min_visor_version: keel_bundle::visor_version(9, 0, 0), ..Policies::default() };
    let (env, _) = bundle(&key(1), 2, &v2, p);
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), keel_bundle::visor_version(0, 1, 0)), Next::None);
    assert_eq!(agent.status(&up, &f).reason, Some(Reason::VisorTooOld));

    // Install 5, then an older sequence is refused (anti-rollback), recorded in the journal.
    let (env, layer) = bundle(&key(1), 5, &v2, Policies::default());
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(serve(&mut agent, &mut f, first, &layer, None).0, Next::Installed);
    up.boot(&mut f).unwrap();
    up.confirm(&mut f).unwrap();
    let (env, _) = bundle(&key(1), 4, &image("4", 3000), Policies::default());
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::None);
    let s = agent.status(&up, &f);
    assert_eq!((s.installed, s.sequence, s.state, s.reason), (5, 4, State::Refused, Some(Reason::SequenceNotNewer)));
    // Offering what is installed is not an error.
    let (env, _) = bundle(&key(1), 5, &v2, Policies::default());
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::None);
}

#[test]
fn a_download_resumes_after_a_reconnect_and_after_a_power_cut() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, layer) = bundle(&key(1), 2, &image("2", 50_000), Policies::default());
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    // The link drops after two pages: the next connection asks from where it stopped.
    let (_, fetched) = serve(&mut agent, &mut f, first, &layer, Some(2 * FETCH_LEN));
    assert_eq!(fetched, 2 * FETCH_LEN);
    let again = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(again, Next::Fetch { sequence: 2, component: 0, offset: 2 * FETCH_LEN, len: FETCH_LEN });
    // Power cut in the middle of the fourth page.
    let at = f.medium().ops();
    f.medium_mut_for_tests().cut_at(at + 3, CutMode::Torn, 5);
    let (_, _) = serve(&mut agent, &mut f, again, &layer, None);
    assert!(!f.medium().powered());
    f.medium_mut_for_tests().power_on();
    // After the reboot a new agent resumes from the last journaled page, not from 0.
    let mut agent = Agent::new();
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A);
    let resumed = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    let Next::Fetch { offset, .. } = resumed else { panic!("{resumed:?}") };
    assert!(offset >= 2 * FETCH_LEN, "resumed at {offset}");
    let (last, fetched) = serve(&mut agent, &mut f, resumed, &layer, None);
    assert_eq!(last, Next::Installed);
    assert!(fetched < layer.len() as u32, "fetched {fetched} of {}", layer.len());
}

#[test]
fn a_layer_tampered_on_the_server_fails_the_digest_and_the_old_app_stays() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, mut layer) = bundle(&key(1), 2, &image("2", 20_000), Policies::default());
    layer[10_000] ^= 0x01;
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(serve(&mut agent, &mut f, first, &layer, None).0, Next::None);
    let s = agent.status(&up, &f);
    assert_eq!((s.state, s.reason), (State::Error, Some(Reason::DigestMismatch)));
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A);
}

#[test]
fn stale_or_misplaced_data_is_ignored() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, layer) = bundle(&key(1), 2, &image("2", 9000), Policies::default());
    let mut agent = Agent::new();
    agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(agent.on_data(&up, &mut f, 3, 0, &layer[..100]), Next::None, "other bundle");
    assert_eq!(agent.on_data(&up, &mut f, 2, 100, &layer[100..200]), Next::None, "wrong offset");
    assert_eq!(agent.status(&up, &f).progress, 0);
}

#[test]
fn after_a_reboot_an_unresumed_download_is_reported_so_the_server_offers_it_again() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, layer) = bundle(&key(1), 2, &image("2", 30_000), Policies::default());
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    serve(&mut agent, &mut f, first, &layer, Some(2 * FETCH_LEN));
    assert_eq!(agent.status(&up, &f).state, State::Downloading);
    // Reboot: the journal still holds the download, but nothing downloads until the offer.
    let agent = Agent::new();
    let s = agent.status(&up, &f);
    assert_eq!((s.state, s.sequence), (State::Idle, 0), "not 'downloading': the server must offer again");
}

#[test]
fn a_polite_update_waits_for_the_app_to_apply_it() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let p = Policies { max_politeness_time_s: 30, ..Policies::default() };
    let (env, layer) = bundle(&key(1), 2, &image("2", 12_000), p);
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    let (last, _) = serve(&mut agent, &mut f, first, &layer, None);
    assert_eq!(last, Next::Ready { politeness_s: 30 });
    assert_eq!(agent.status(&up, &f).state, State::Installing);
    // Nothing committed yet: a reset now keeps the running app.
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A);
    // The same offer again (reconnect) does not download again.
    assert_eq!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::Ready { politeness_s: 30 });
    assert_eq!(agent.apply(&up, &mut f), Next::Installed);
    assert!(up.boot(&mut f).unwrap().trial);
    assert_eq!(agent.apply(&up, &mut f), Next::None, "nothing waits any more");
}

#[test]
fn a_download_complete_before_a_reboot_is_finished_by_the_next_offer() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    // Exactly two pages: the last page's journal record says every byte is written.
    let v2 = image("2", 2 * FETCH_LEN as usize - common::HEADER);
    assert_eq!(v2.len() as u32 % FETCH_LEN, 0);
    let p = Policies { max_politeness_time_s: 30, ..Policies::default() };
    let (env, layer) = bundle(&key(1), 2, &v2, p);
    let mut agent = Agent::new();
    let first = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(serve(&mut agent, &mut f, first, &layer, None).0, Next::Ready { politeness_s: 30 });
    // Reboot while the verified update waited for the app (nothing committed, nothing in RAM).
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A);
    let mut agent = Agent::new();
    let again = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(again, Next::Ready { politeness_s: 30 }, "finished from the journal, no zero-length fetch");
    assert_eq!(agent.apply(&up, &mut f), Next::Installed);
    assert!(up.boot(&mut f).unwrap().trial);
}

#[test]
fn a_layer_the_server_cannot_serve_ends_the_download_with_an_error() {
    let up = updater();
    let mut f = factory(&image("1", 2000));
    let (env, _) = bundle(&key(1), 2, &image("2", 20_000), Policies::default());
    let mut agent = Agent::new();
    agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    assert_eq!(agent.on_layer_error(3), Next::None, "another bundle: ignored");
    assert!(agent.downloading());
    agent.on_layer_error(2);
    let s = agent.status(&up, &f);
    assert_eq!((s.state, s.reason), (State::Error, Some(Reason::LayerUnavailable)));
    // The next offer resumes.
    assert!(matches!(agent.on_offer(&up, &mut f, &env, &trusted(), 0), Next::Fetch { sequence: 2, .. }));
}

#[test]
fn on_a_flash_with_pages_larger_than_a_request_a_page_is_fetched_in_several_requests() {
    use keel_flash::layout::Partition;
    use keel_flash::Geometry;
    // STM32H7-like sectors: 128 KiB pages, 32-byte units. A request may ask for at most
    // MAX_FETCH bytes, which the server enforces: the agent splits the page.
    let g = Geometry::new(128 * 1024, 32).unwrap();
    let page = g.page_size();
    let journal = Partition { name: "journal", offset: 0, size: 2 * page };
    let a = Partition { name: "app-a", offset: 2 * page, size: 2 * page };
    let b = Partition { name: "app-b", offset: 4 * page, size: 2 * page };
    let target = keel_image::Target {
        exec_base: 0x0020_0000,
        exec_size: 0x0020_0000,
        slot_capacity: 2 * page - 256,
        abi: (1, 0),
    };
    let up = keel_update::Updater::new(journal, a, b, target);
    let mut f = Nor::new(SimFlash::with_geometry(6 * page, g));
    let layer = image("2", 150_000);
    let layers = [LayerSpec { id: "app", target: Target::AppSlot, bytes: &layer }];
    let spec = BundleSpec { sequence: 2, layers: &layers, policies: Policies::default() };
    let env = split_bundle(&build_bundle(&spec, &key(1), |_| Some(a.size)).unwrap()).unwrap().envelope;
    let mut agent = Agent::new();
    let mut next = agent.on_offer(&up, &mut f, &env, &trusted(), 0);
    let mut requests = 0;
    while let Next::Fetch { sequence, component, offset, len } = next {
        assert_eq!(component, 0);
        assert!(len <= keel_proto::msg::MAX_FETCH, "a request within the wire limit: {len}");
        requests += 1;
        next = Next::None;
        for (i, chunk) in layer[offset as usize..(offset + len) as usize].chunks(960).enumerate() {
            next = agent.on_data(&up, &mut f, sequence, offset + (i * 960) as u32, chunk);
        }
    }
    assert_eq!(next, Next::Installed);
    assert_eq!(requests, layer.len().div_ceil(keel_proto::msg::MAX_FETCH as usize));
}
