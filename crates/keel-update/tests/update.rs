//! Install, trial, confirm and rollback, one behaviour at a time.

mod common;

use common::*;
use keel_flash::sim::CutMode;
use keel_flash::{Nor, PAGE_SIZE};
use keel_update::{BootPlan, Confirm, Error, Outcome, Phase, Reason, Slot, TrialPolicy};

fn install(up: &keel_update::Updater, f: &mut Nor<keel_flash::sim::SimFlash>, seq: u64, layer: &[u8], p: TrialPolicy) {
    let mut dl = up.offer(f, &offer(seq, layer, p)).unwrap();
    for chunk in layer.chunks(700) {
        dl.write(up, f, chunk).unwrap();
    }
    dl.finish(up, f).unwrap();
}

#[test]
fn factory_device_boots_slot_a() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    let before = f.medium().ops();
    assert_eq!(up.boot(&mut f).unwrap(), BootPlan { slot: Slot::A, trial: false, rolled_back: None });
    assert_eq!(version_in(&up, &f, Slot::A).as_deref(), Some("1"));
    assert_eq!(f.medium().ops(), before, "a normal boot writes nothing");
}

#[test]
fn install_trial_confirm_switches_slots_and_raises_the_installed_sequence() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    let v2 = image("2", 20_000);
    install(&up, &mut f, 5, &v2, policy());
    assert_eq!(up.boot(&mut f).unwrap(), BootPlan { slot: Slot::B, trial: true, rolled_back: None });
    assert!(up.confirm(&mut f).unwrap());
    let s = up.state(&f).unwrap();
    assert_eq!((s.active, s.installed_seq, s.phase, s.last), (Slot::B, 5, Phase::Idle, Some((5, Outcome::Confirmed))));
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::B);
    assert_eq!(version_in(&up, &f, Slot::B).as_deref(), Some("2"));
}

#[test]
fn a_sequence_not_above_the_installed_one_is_refused_without_writing_the_slot() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    install(&up, &mut f, 5, &image("2", 9000), policy());
    up.boot(&mut f).unwrap();
    up.confirm(&mut f).unwrap();
    for seq in [5, 4, 0] {
        let before = f.medium().bytes()[SLOT_A.offset as usize..].to_vec();
        let r = up.offer(&mut f, &offer(seq, &image("0", 3000), policy()));
        assert_eq!(r.err(), Some(Error::Update(Reason::SequenceNotNewer)));
        assert_eq!(f.medium().bytes()[SLOT_A.offset as usize..], before[..], "no slot touched");
        assert_eq!(up.state(&f).unwrap().last, Some((seq, Outcome::Refused(Reason::SequenceNotNewer))));
    }
    let too_big = image("9", (SLOT_B.size as usize) + 1);
    let r = up.offer(&mut f, &offer(9, &too_big, policy()));
    assert_eq!(r.err(), Some(Error::Update(Reason::TooLarge)));
}

#[test]
fn crash_loop_watchdog_and_grace_time_roll_back_to_the_previous_app() {
    let up = updater();
    type Trigger = fn(&keel_update::Updater, &mut Nor<keel_flash::sim::SimFlash>) -> Reason;
    let cases: [(&str, Trigger); 4] = [
        ("crash loop", |up, f| {
            assert_eq!(up.app_crashed(f, false).unwrap(), None);
            assert_eq!(up.app_crashed(f, false).unwrap(), None);
            up.app_crashed(f, false).unwrap().unwrap()
        }),
        ("hang", |up, f| {
            up.app_crashed(f, true).unwrap();
            up.app_crashed(f, true).unwrap();
            up.app_crashed(f, true).unwrap().unwrap()
        }),
        ("never confirms", |up, f| match up.grace_expired(f, true).unwrap() {
            Some(Outcome::RolledBack(r)) => r,
            o => panic!("{o:?}"),
        }),
        ("resets in a loop", |up, f| {
            up.boot(f).unwrap();
            up.boot(f).unwrap();
            up.boot(f).unwrap().rolled_back.unwrap()
        }),
    ];
    let expected = [Reason::CrashLoop, Reason::Watchdog, Reason::NotConfirmed, Reason::TrialResets];
    for ((name, trigger), want) in cases.into_iter().zip(expected) {
        let mut f = factory(&image("1", 3000));
        install(&up, &mut f, 2, &image("2", 12_000), policy());
        assert!(up.boot(&mut f).unwrap().trial, "{name}");
        assert_eq!(trigger(&up, &mut f), want, "{name}");
        let s = up.state(&f).unwrap();
        assert_eq!((s.active, s.installed_seq, s.last), (Slot::A, 0, Some((2, Outcome::RolledBack(want)))), "{name}");
        assert_eq!(up.boot(&mut f).unwrap(), BootPlan { slot: Slot::A, trial: false, rolled_back: None }, "{name}");
        assert_eq!(version_in(&up, &f, Slot::A).as_deref(), Some("1"), "{name}");
        // The rolled-back sequence can be offered again (a fixed bundle needs a higher one only
        // if the server says so); a higher one installs into the same slot.
        install(&up, &mut f, 3, &image("3", 5000), policy());
        assert!(up.boot(&mut f).unwrap().trial);
    }
}

#[test]
fn confirm_by_link_policy_confirms_only_with_the_link_up() {
    let up = updater();
    let by_link = TrialPolicy { confirm: Confirm::ByLink, ..policy() };
    let mut f = factory(&image("1", 3000));
    install(&up, &mut f, 2, &image("2", 4000), by_link);
    up.boot(&mut f).unwrap();
    assert_eq!(up.grace_expired(&mut f, true).unwrap(), Some(Outcome::Confirmed));
    assert_eq!(up.state(&f).unwrap().active, Slot::B);
    install(&up, &mut f, 3, &image("3", 4000), by_link);
    up.boot(&mut f).unwrap();
    assert_eq!(up.grace_expired(&mut f, false).unwrap(), Some(Outcome::RolledBack(Reason::NoLink)));
    assert_eq!(up.state(&f).unwrap().active, Slot::B);
}

#[test]
fn a_tampered_layer_fails_the_digest_and_the_running_app_stays() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    let v2 = image("2", 10_000);
    let mut dl = up.offer(&mut f, &offer(2, &v2, policy())).unwrap();
    let mut bad = v2.clone();
    bad[5000] ^= 1;
    dl.write(&up, &mut f, &bad).unwrap();
    assert_eq!(dl.finish(&up, &mut f).err(), Some(Error::Update(Reason::DigestMismatch)));
    let s = up.state(&f).unwrap();
    assert_eq!((s.active, s.phase, s.last), (Slot::A, Phase::Idle, Some((2, Outcome::Failed(Reason::DigestMismatch)))));
    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A);
}

#[test]
fn a_download_cut_by_power_loss_resumes_from_the_last_journaled_page() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    let v2 = image("2", 40_000);
    let o = offer(2, &v2, policy());
    let mut dl = up.offer(&mut f, &o).unwrap();
    // Power goes in the middle of the write that starts the fourth page of the layer.
    let cut = 3 * PAGE_SIZE as usize + 100;
    dl.write(&up, &mut f, &v2[..cut]).unwrap();
    let at = f.medium().ops();
    f.medium_mut_for_tests().cut_at(at + 1, CutMode::Torn, 7);
    assert!(dl.write(&up, &mut f, &v2[cut..]).is_err());
    f.medium_mut_for_tests().power_on();

    assert_eq!(up.boot(&mut f).unwrap().slot, Slot::A, "the old app runs meanwhile");
    let mut dl = up.offer(&mut f, &o).unwrap();
    assert_eq!(dl.offset(), 3 * PAGE_SIZE, "resumes at the last complete page, not at 0");
    let from = dl.offset() as usize;
    for chunk in v2[from..].chunks(999) {
        dl.write(&up, &mut f, chunk).unwrap();
    }
    dl.finish(&up, &mut f).unwrap();
    assert_eq!(up.boot(&mut f).unwrap(), BootPlan { slot: Slot::B, trial: true, rolled_back: None });
    assert_eq!(version_in(&up, &f, Slot::B).as_deref(), Some("2"));
}

#[test]
fn bytes_beyond_the_layer_and_a_short_finish_are_errors() {
    let up = updater();
    let mut f = factory(&image("1", 3000));
    let v2 = image("2", 1000);
    let mut dl = up.offer(&mut f, &offer(2, &v2, policy())).unwrap();
    dl.write(&up, &mut f, &v2[..HEADER]).unwrap();
    assert_eq!(dl.clone().finish(&up, &mut f).err(), Some(Error::OutOfOrder));
    assert_eq!(dl.write(&up, &mut f, &vec![0; v2.len()]).err(), Some(Error::OutOfOrder));
}
