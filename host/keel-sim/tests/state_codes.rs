//! The device's update states (`keel_update::agent::State`, which keel-update defines without
//! depending on the wire crate) and the wire codes (`keel_link::msg::UpdateState`) are the same
//! numbers with the same meaning.

use keel_link::msg::UpdateState;
use keel_update::agent::State;

#[test]
fn agent_states_are_the_wire_codes() {
    let pairs = [
        (State::Idle, "idle"),
        (State::Downloading, "downloading"),
        (State::Installing, "installing"),
        (State::Trial, "trial"),
        (State::Confirmed, "confirmed"),
        (State::RolledBack, "rolled_back"),
        (State::Refused, "refused"),
        (State::Error, "error"),
    ];
    for (state, name) in pairs {
        let wire = UpdateState::from_u8(state as u8).unwrap_or_else(|| panic!("{state:?} has no wire code"));
        assert_eq!(wire.as_str(), name, "{state:?}");
    }
}
